//! The `coscale` command line: runs the platform (`up`, `demo`, `agent`, `runtime`)
//! and talks to it (`apply`, `get`, `describe`, `delete`, `infer`), plus offline tools
//! (`validate`, `hpa explain`).

pub mod bench;
pub mod client;
pub mod demo;
pub mod hpa;
pub mod infer;
pub mod k8s;
pub mod load;
pub mod objects;
pub mod output;
pub mod platform;
pub mod serve;
pub mod sim;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// coscale: serve many models on shared servers and autoscale both, Seldon Core 2 compatible.
#[derive(Debug, Parser)]
#[command(name = "coscale", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run control plane, router and server replicas on this machine.
    Up(Box<serve::UpArgs>),
    /// Start the platform in a temporary directory, serve the examples, show the results.
    Demo(demo::DemoArgs),
    /// Create or update Models, Servers and ServerConfigs from manifests.
    Apply(objects::ApplyArgs),
    /// Delete objects by manifest or by name.
    Delete(objects::DeleteArgs),
    /// List Models or Servers.
    Get(objects::GetArgs),
    /// Show one Model or Server in detail: placement, conditions, events.
    Describe(objects::DescribeArgs),
    /// Send one inference request through the router.
    Infer(infer::InferArgs),
    /// Drive open-loop load at a model through the router and report latencies.
    Load(load::LoadArgs),
    /// Check manifests offline; exit 1 with every error if any is invalid.
    Validate(objects::ValidateArgs),
    /// Benchmarks on the local platform.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// HorizontalPodAutoscaler tools.
    Hpa {
        #[command(subcommand)]
        command: HpaCommand,
    },
    /// Run one server replica's agent (started by the provisioner).
    #[command(hide = true)]
    Agent(serve::AgentArgs),
    /// Run the built-in V2 inference server on its own, with a model repository.
    Runtime(serve::RuntimeArgs),
    /// Simulate autoscaling policies on a trace (deterministic, virtual time).
    Sim(sim::SimArgs),
    /// Print (or write) the Model, Server and ServerConfig CustomResourceDefinitions.
    Crds(k8s::CrdsArgs),
    /// Run the Kubernetes operator: CRs to the control plane, Servers as StatefulSets.
    Operator(k8s::OperatorArgs),
}

#[derive(Debug, Subcommand)]
pub enum HpaCommand {
    /// Explain the decision an HPA makes in a scenario (offline).
    Explain {
        /// Scenario file (YAML or JSON).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Sets up logging: `RUST_LOG` or `warn` for client commands, `info` for servers.
fn init_logging(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.command,
        Command::Up(_) | Command::Agent(_) | Command::Runtime(_) | Command::Operator(_)
    );
    init_logging(server);
    if server {
        raise_open_files_limit();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let chosen = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    let cores = || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if let Some(workers) = async_workers(&cli.command, chosen, cores) {
        builder.worker_threads(workers);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async workers of `command`'s runtime when not tokio's default (one per core, or
/// `TOKIO_WORKER_THREADS` when `chosen`): processes that run inferences (`agent`, `runtime`)
/// take one per core and one more, as the engine computes short inferences inline on one fewer
/// than the workers: a slot per core, and a worker left to read requests meanwhile. `cores` is
/// asked only then (it reads cgroup files), not by every client command.
fn async_workers(command: &Command, chosen: bool, cores: impl FnOnce() -> usize) -> Option<usize> {
    let infers = matches!(command, Command::Agent(_) | Command::Runtime(_));
    (infers && !chosen).then(|| cores() + 1)
}

/// Servers hold two sockets per proxied client connection (the router) or one per client, and
/// the usual soft limit of 1,024 open files would refuse connections long before the machine
/// runs out of anything: raise the soft limit to the hard one, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let from = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(?from, to = ?limit.maximum, "raised the open files limit"),
            Err(err) => tracing::warn!(%err, "could not raise the open files limit"),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(a) => serve::up(*a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Apply(a) => objects::apply(a).await,
        Command::Delete(a) => objects::delete(a).await,
        Command::Get(a) => objects::get(a).await,
        Command::Describe(a) => objects::describe(a).await,
        Command::Infer(a) => infer::run(a).await,
        Command::Load(a) => load::run(a).await,
        Command::Bench { command } => bench::run(command).await,
        Command::Validate(a) => Ok(objects::validate(a)),
        Command::Hpa {
            command: HpaCommand::Explain { file, output },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            match coscale_core::hpa::scenario::render(&text, output == Format::Json) {
                Ok(out) => {
                    println!("{}", out.trim_end());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Agent(a) => serve::agent(a).await,
        Command::Runtime(a) => serve::runtime(a).await,
        Command::Sim(a) => sim::run(a).await,
        Command::Crds(a) => k8s::crds(a),
        Command::Operator(a) => k8s::operator(a).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(args: &[&str]) -> Command {
        Cli::try_parse_from(args)
            .map(|c| c.command)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn processes_that_run_inferences_get_a_worker_per_core_and_one_more() {
        let runtime = command(&["coscale", "runtime", "--repository", "models"]);
        let agent = command(&[
            "coscale",
            "agent",
            "--control-plane",
            "http://127.0.0.1:1",
            "--token-file",
            "token",
            "--server",
            "s",
        ]);
        let up = command(&["coscale", "up"]);
        assert_eq!(async_workers(&runtime, false, || 2), Some(3));
        assert_eq!(async_workers(&agent, false, || 8), Some(9));
        assert_eq!(async_workers(&up, false, || 2), None, "tokio's default");
        assert_eq!(
            async_workers(&runtime, true, || 2),
            None,
            "TOKIO_WORKER_THREADS wins"
        );
    }
}
