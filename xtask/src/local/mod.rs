//! Everything that stands in for AWS on this machine: where the emulator is and how a program
//! is started to call it (`aws.rs`), starting and stopping it (`emulator.rs`), its identities
//! and their config file (`identities.rs`), its control API and log (`control.rs`), the local
//! "instance" that runs the rendered user-data and the service (`instance.rs`,
//! `first_boot.rs`), and the `local` command over them (`command.rs`).

pub mod aws;
mod command;
mod control;
pub mod emulator;
pub mod first_boot;
pub mod identities;
pub mod instance;

pub use command::run;
