//! Every command's flags, in one place: what `cargo xtask --help` shows. The commands take
//! these structs; nothing here runs anything.

use std::path::PathBuf;

#[derive(clap::Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "Deploy, check and run the encrypted file pipeline",
    version
)]
pub struct Cli {
    /// Environment to act on: `local` (the AWS emulator) or a file terraform/environments/<name>.tfvars.
    #[arg(
        long = "env",
        global = true,
        default_value = "local",
        env = "XTASK_ENV"
    )]
    pub env: String,
    /// Print every command and AWS API call that would run, and change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Print more detail about what runs.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create or check the private, encrypted state and artifact buckets of an environment.
    Bootstrap(Bootstrap),
    /// Build and upload the service binary, run Terraform init, plan and apply, then save
    /// outputs and user-data (`--plan FILE` applies a reviewed plan instead).
    Deploy(Deploy),
    /// What `deploy` would change, saved for `deploy --plan FILE` (exit 0 none, 2 changes, 1 error).
    Plan(Plan),
    /// Write the EC2 user-data script from the environment's Terraform outputs.
    RenderUserData(RenderUserData),
    /// Upload and download through the deployed service and check every property.
    Smoke(Smoke),
    /// A new bearer token (SSM SecureString); waits until the service accepts it.
    RotateToken(Rotate),
    /// A new TLS key and certificate, made on the instance; waits for it and pins it.
    RotateCert(Rotate),
    /// Destroy an environment's infrastructure (and optionally its state and artifact buckets).
    Destroy(Destroy),
    /// Start, stop, inspect or reset the local AWS emulator (moto server).
    Local(Local),
    /// Run every check: formatting, lints, static Terraform checks, tests against the emulator.
    Test(Test),
    /// Run the whole pipeline locally: emulator, stack, service, smoke test (no AWS account).
    Up(Up),
    /// Stop the local service and emulator started by `up`.
    Down(Down),
    /// Measure the service's throughput and memory against direct S3 transfers (release build).
    Bench(Bench),
    /// Many concurrent clients for a bounded time, then check every acknowledged file was
    /// processed and no multipart upload is left (release build, on the emulator).
    Load(Load),
}

#[derive(clap::Args, Debug, Default)]
pub struct Bootstrap {
    /// Repair settings that drifted on an existing state bucket (default: only report them).
    #[arg(long)]
    pub fix: bool,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Deploy {
    /// Apply without asking; required when standard input is not a terminal.
    #[arg(long)]
    pub yes: bool,
    /// Apply this saved plan (from `cargo xtask plan --out FILE`) instead of planning again.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    #[command(flatten)]
    pub shared: Stack,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Plan {
    /// Save the plan here, for `cargo xtask deploy --plan FILE` [default: target/xtask/<env>/plan.tfplan].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on standard output (Terraform's own output goes to standard error).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub shared: Stack,
}

/// What `deploy` and `plan` both take.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct Stack {
    /// Ship this service binary instead of building it (`cargo build --release` for x86_64
    /// Linux); it must start on Amazon Linux 2023 all the same.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Copy the state to the backend bootstrap now names (a renamed or moved state bucket).
    #[arg(long)]
    pub migrate_state: bool,
    /// Terraform binary: `terraform`, `tofu` or a path [env: XTASK_TERRAFORM].
    #[arg(long)]
    pub terraform: Option<String>,
    /// Root module to deploy instead of terraform/ (the tests apply a copy of it).
    #[arg(long, hide = true)]
    pub root_module: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RenderUserData {
    /// Where to write the script [default: target/xtask/<env>/user-data.sh].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Smoke {
    /// Service base URL [default: the `service_url` output of the environment].
    #[arg(long)]
    pub url: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the uploaded files (default: delete them afterwards).
    #[arg(long)]
    pub keep: bool,
    /// Bearer token, if the service requires one.
    #[arg(long, env = "FILEPIPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds to wait for each file to be processed.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Seconds to wait for /readyz first: a freshly booted instance downloads and starts the
    /// service before it answers.
    #[arg(long, default_value_t = 600)]
    pub ready_timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct Rotate {
    /// Seconds to wait for the service to use the new secret.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct Destroy {
    /// Do not ask; required when standard input is not a terminal.
    #[arg(long)]
    pub yes: bool,
    /// Delete every object version and delete marker in the initial, final and access-log
    /// buckets first, so destroying them cannot fail on a non-empty bucket.
    #[arg(long)]
    pub empty_buckets: bool,
    /// Also delete the artifact bucket and, last of all, the Terraform state bucket (all
    /// versions of both).
    #[arg(long)]
    pub purge_state: bool,
    /// Terraform binary: `terraform`, `tofu` or a path [env: XTASK_TERRAFORM].
    #[arg(long)]
    pub terraform: Option<String>,
    /// Root module to destroy instead of terraform/ (the tests destroy a copy of it).
    #[arg(long, hide = true)]
    pub root_module: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct Local {
    #[command(subcommand)]
    pub action: LocalAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum LocalAction {
    /// Start the emulator on 127.0.0.1 (installs moto[server] into target/venv if needed).
    Start {
        /// Port to listen on [default: $XTASK_EMULATOR_PORT or 4566].
        #[arg(long)]
        port: Option<u16>,
        /// Do not enforce IAM: every request is allowed, signed or not (for debugging only;
        /// also XTASK_EMULATOR_NO_IAM=1).
        #[arg(long)]
        no_iam: bool,
    },
    /// Print the shell exports that make the AWS CLI talk to the emulator as its operator:
    /// `eval "$(cargo xtask local env)"`.
    Env {
        /// Print instead what a plain `cargo test` needs to run as `cargo xtask test` runs it
        /// (the emulator's endpoints and profiles, the test tools): `eval "$(cargo xtask local
        /// env --tests)" && cargo test -p xtask -- policy_enforcement`.
        #[arg(long)]
        tests: bool,
    },
    /// Stop the emulator this checkout started; its data is lost.
    Stop,
    /// Say whether the emulator runs, where, and what that means for its data.
    Status,
    /// Wipe all data in the running emulator.
    Reset,
}

#[derive(clap::Args, Debug)]
pub struct Test {
    /// Run only the tests whose name contains FILTER (`policy_enforcement`: one file of the
    /// xtask's tests; or a test's full name), or, when service/tests/FILTER.rs exists, that
    /// file's tests. Formatting, lints and static checks are skipped then.
    pub filter: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct Up {
    /// Port of the local service on 127.0.0.1.
    #[arg(long, env = "XTASK_SERVICE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Service processes to run, on ports from --port up: they share the stack's queue as a
    /// fleet of instances does, and the smoke test runs through each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub instances: u16,
}

#[derive(clap::Args, Debug)]
pub struct Down {
    /// Also delete the local state files (target/xtask/local/).
    #[arg(long)]
    pub purge: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Bench {
    /// Repetitions of every measurement (interleaved); medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repetitions: u32,
    /// Large objects, uploaded and downloaded concurrently.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub large_count: u32,
    /// Size of each large object in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub large_mib: u64,
    /// Also run the large case with 1 GiB objects (the memory target's case).
    #[arg(long)]
    pub large: bool,
    /// Small objects, each uploaded, processed and downloaded.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub small_count: u32,
    /// Size of each small object in KiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub small_kib: u32,
    /// Concurrent clients for small objects.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Size in MiB of each large object in the case run on moto instead of s3s-fs (0: skip it).
    #[arg(long, default_value_t = 16)]
    pub moto_mib: u64,
    /// Files in the fleet case (1, 2 and 4 instances sharing the queue, on moto; 0: skip it).
    #[arg(long, default_value_t = 400)]
    pub fleet_files: u32,
    /// Size of each of them in KiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub fleet_kib: u32,
    /// Also write an SVG bar chart next to the JSON report.
    #[arg(long)]
    pub plot: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Concurrent clients, one case per value.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64, 256])]
    pub clients: Vec<usize>,
    /// File sizes in KiB, one case per value and client count.
    #[arg(long, value_delimiter = ',', default_values_t = [4, 10240])]
    pub kib: Vec<u64>,
    /// Seconds each client keeps uploading, per case and per side (baseline, service).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Service instances sharing the queue; clients are spread over them.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub instances: u64,
    /// Plaintext MiB of the Encryption SDK messages of the encrypted case (0: no such case).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=15))]
    pub encrypted_mib: u64,
    /// Clients of the encrypted case.
    #[arg(long, default_value_t = 8)]
    pub encrypted_clients: usize,
}
