//! Everything that stands in for AWS on this machine: where the emulator is and its
//! identities (`aws.rs`), starting and stopping it (`emulator.rs`), the local "instance"
//! that runs the rendered user-data and the service (`instance.rs`, `first_boot.rs`), and
//! the `local` command over them (`command.rs`).

pub mod aws;
mod command;
pub mod emulator;
pub mod first_boot;
pub mod instance;

pub use command::run;
