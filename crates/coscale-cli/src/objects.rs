//! Object commands: `apply`, `delete`, `get`, `describe`, `validate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use coscale_api::rest::{
    ApplyResponse, ManifestRequest, ModelStatus, ServerConfigStatus, ServerStatus,
};

use crate::client::{Client, Target};
use crate::output::{self, Format};

/// Reads a manifest file into an API request (`-` reads standard input).
pub fn manifest_request(file: &Path, dry_run: bool) -> anyhow::Result<ManifestRequest> {
    let (text, base) = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        (s, std::env::current_dir()?)
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let abs = std::fs::canonicalize(file)?;
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        (text, base)
    };
    Ok(ManifestRequest {
        source: file.display().to_string(),
        text,
        dry_run,
        base_dir: Some(base.display().to_string()),
    })
}

pub fn print_results(resp: &ApplyResponse) {
    for r in &resp.results {
        let suffix = if resp.dry_run { " (dry run)" } else { "" };
        println!("{}/{} {}{suffix}", r.kind.to_lowercase(), r.name, r.action);
        for w in &r.warnings {
            eprintln!("warning: {}/{}: {w}", r.kind.to_lowercase(), r.name);
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Manifest files (multi-document YAML or JSON; `-` for standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate and show what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until every Model in the files is available, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub target: Target,
}

pub async fn apply(a: ApplyArgs) -> anyhow::Result<ExitCode> {
    // Read and validate every file first, so a bad file applies nothing.
    let mut requests = Vec::new();
    let mut bad = false;
    for f in &a.files {
        let req = manifest_request(f, a.dry_run)?;
        if let Err(errs) = coscale_core::resources::parse_manifests(&req.source, &req.text) {
            eprintln!("{errs}");
            bad = true;
        }
        requests.push(req);
    }
    if bad {
        eprintln!("error: invalid manifests: nothing was applied");
        return Ok(ExitCode::FAILURE);
    }
    let client = a.target.client()?;
    let mut models = Vec::new();
    for req in &requests {
        let resp = client.apply(req).await?;
        print_results(&resp);
        models.extend(
            resp.results
                .iter()
                .filter(|r| r.kind == "Model")
                .map(|r| r.name.clone()),
        );
    }
    if a.wait && !a.dry_run && !models.is_empty() {
        return wait_available(&client, &models, Duration::from_secs(a.timeout)).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows a progress bar until every model is available (or the timeout passes).
pub async fn wait_available(
    client: &Client,
    models: &[String],
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(models.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} models available {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let all = client.models().await?;
        let mut ready = 0;
        let mut waiting = Vec::new();
        for name in models {
            match all.iter().find(|m| &m.name == name) {
                Some(m) if m.state == "ModelAvailable" => ready += 1,
                Some(m) => waiting.push(format!("{}: {}", m.name, short_reason(m))),
                None => waiting.push(format!("{name}: not found")),
            }
        }
        bar.set_position(ready);
        bar.set_message(waiting.first().cloned().unwrap_or_default());
        if waiting.is_empty() {
            bar.finish_with_message("");
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= deadline {
            bar.abandon();
            eprintln!(
                "error: timed out; still waiting for:\n  {}",
                waiting.join("\n  ")
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn short_reason(m: &ModelStatus) -> String {
    if m.reason.is_empty() {
        m.state.clone()
    } else {
        format!("{} ({})", m.state, m.reason)
    }
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// `model NAME` or `server NAME` (or use -f).
    pub what: Vec<String>,
    /// Delete what these manifests describe.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

fn kind_path(kind: &str) -> anyhow::Result<&'static str> {
    Ok(match kind {
        "model" | "models" | "mlm" => "models",
        "server" | "servers" | "mls" => "servers",
        "serverconfig" | "serverconfigs" | "mlc" => "serverconfigs",
        "hpa" | "hpas" | "horizontalpodautoscaler" | "horizontalpodautoscalers" => "hpas",
        other => bail!("unknown kind {other:?}: use model, server, serverconfig or hpa"),
    })
}

pub async fn delete(a: DeleteArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    if !a.files.is_empty() {
        for f in &a.files {
            let resp = client.delete_manifest(&manifest_request(f, false)?).await?;
            print_results(&resp);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let [kind, name] = a.what.as_slice() else {
        bail!("usage: coscale delete model NAME | server NAME | -f FILE");
    };
    let resp = client.delete(kind_path(kind)?, name).await?;
    print_results(&resp);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// `models`, `servers`, `serverconfigs` or `hpa`.
    pub kind: String,
    /// One object by name.
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub target: Target,
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `get models` table.
pub fn models_table(models: &[ModelStatus]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                (m.state == "ModelAvailable")
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False"),
                m.state.clone(),
                m.desired_replicas.to_string(),
                m.available_replicas.to_string(),
                m.server.clone().unwrap_or_else(|| "-".to_owned()),
                m.version.to_string(),
                output::age(m.created_unix_millis, now),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "READY",
            "STATE",
            "DESIRED",
            "AVAILABLE",
            "SERVER",
            "VERSION",
            "AGE",
        ],
        &rows,
    )
}

/// The `get servers` table.
pub fn servers_table(servers: &[ServerStatus]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                (s.ready_replicas >= s.desired_replicas)
                    .to_string()
                    .replace("true", "True")
                    .replace("false", "False"),
                s.desired_replicas.to_string(),
                s.ready_replicas.to_string(),
                s.loaded_models.to_string(),
                s.server_config.clone(),
                output::age(s.created_unix_millis, now),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "READY",
            "REPLICAS",
            "READY-REPLICAS",
            "LOADED-MODELS",
            "CONFIG",
            "AGE",
        ],
        &rows,
    )
}

pub fn configs_table(configs: &[ServerConfigStatus]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = configs
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                if c.built_in { "built-in" } else { "applied" }.to_owned(),
                c.runtime.clone(),
                if c.servers.is_empty() {
                    "-".to_owned()
                } else {
                    c.servers.join(",")
                },
                c.created_unix_millis
                    .map_or_else(|| "-".to_owned(), |t| output::age(t, now)),
            ]
        })
        .collect();
    output::table(&["NAME", "SOURCE", "RUNTIME", "SERVERS", "AGE"], &rows)
}

pub async fn get(a: GetArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    match kind_path(&a.kind)? {
        "models" => {
            let models = match &a.name {
                Some(n) => vec![client.model(n).await?],
                None => client.models().await?,
            };
            output::print(a.output, &models, || models_table(&models))?;
        }
        "servers" => {
            let servers = match &a.name {
                Some(n) => vec![client.server(n).await?],
                None => client.servers().await?,
            };
            output::print(a.output, &servers, || servers_table(&servers))?;
        }
        "serverconfigs" => {
            let configs = match &a.name {
                Some(n) => vec![client.server_config(n).await?],
                None => client.server_configs().await?,
            };
            output::print(a.output, &configs, || configs_table(&configs))?;
        }
        "hpas" => crate::hpa::get(&client, a.name.as_deref(), a.output).await?,
        _ => bail!("get supports models, servers, serverconfigs and hpa"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// `model` or `server`.
    pub kind: String,
    pub name: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub target: Target,
}

fn events_text(events: &[coscale_api::rest::EventRecord]) -> String {
    let now = now_millis();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.kind.clone(),
                e.reason.clone(),
                output::age(e.unix_millis, now),
                e.message.clone(),
            ]
        })
        .collect();
    output::table(&["TYPE", "REASON", "AGE", "MESSAGE"], &rows)
}

pub fn describe_model(m: &ModelStatus) -> String {
    let mut s = String::new();
    s.push_str(&format!("Name:          {}\n", m.name));
    s.push_str(&format!("Version:       {}\n", m.version));
    s.push_str(&format!("State:         {}\n", m.state));
    if !m.reason.is_empty() {
        s.push_str(&format!("Reason:        {}\n", m.reason));
    }
    s.push_str(&format!("Storage URI:   {}\n", m.storage_uri));
    s.push_str(&format!("Requirements:  {}\n", m.requirements.join(", ")));
    let mut memory = m
        .memory_bytes
        .map(output::bytes)
        .unwrap_or_else(|| "unset".to_owned());
    let extra: Vec<String> = [
        m.estimated_memory_bytes
            .map(|b| format!("estimated {} from the artifact", output::bytes(b))),
        m.measured_memory_bytes
            .map(|b| format!("measured {} after load", output::bytes(b))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !extra.is_empty() {
        memory.push_str(&format!(" ({})", extra.join(", ")));
    }
    s.push_str(&format!("Memory:        {memory}\n"));
    s.push_str(&format!(
        "Replicas:      {} desired, {} available (min {}, max {})\n",
        m.desired_replicas,
        m.available_replicas,
        m.min_replicas,
        m.max_replicas
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unset".to_owned())
    ));
    s.push_str(&format!(
        "Server:        {}\n",
        m.server.clone().unwrap_or_else(|| "-".to_owned())
    ));
    s.push_str("Placement:\n");
    let rows: Vec<Vec<String>> = m
        .replicas
        .iter()
        .map(|r| {
            vec![
                format!("{}-{}", r.server, r.replica),
                r.version.to_string(),
                r.state.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    for line in output::table(&["REPLICA", "VERSION", "STATE", "REASON"], &rows).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str("Events:\n");
    for line in events_text(&m.events).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

pub fn describe_server(sv: &ServerStatus) -> String {
    let mut s = String::new();
    s.push_str(&format!("Name:           {}\n", sv.name));
    s.push_str(&format!("ServerConfig:   {}\n", sv.server_config));
    s.push_str(&format!("Capabilities:   {}\n", sv.capabilities.join(", ")));
    s.push_str(&format!(
        "Replicas:       {} desired, {} ready (min {}, max {})\n",
        sv.desired_replicas,
        sv.ready_replicas,
        sv.min_replicas,
        sv.max_replicas
            .map(|v| v.to_string())
            .unwrap_or_else(|| "unset".to_owned())
    ));
    s.push_str(&format!("Loaded models:  {}\n", sv.loaded_models));
    s.push_str("Replicas:\n");
    let rows: Vec<Vec<String>> = sv
        .replicas
        .iter()
        .map(|r| {
            vec![
                format!("{}-{}", sv.name, r.replica),
                r.state.clone(),
                r.pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                format!(
                    "{} / {}",
                    output::bytes(r.used_memory_bytes),
                    output::bytes(r.memory_bytes)
                ),
                if r.loaded_models.is_empty() {
                    "-".to_owned()
                } else {
                    r.loaded_models.join(",")
                },
                r.reason.clone(),
            ]
        })
        .collect();
    for line in output::table(
        &["REPLICA", "STATE", "PID", "MEMORY", "MODELS", "REASON"],
        &rows,
    )
    .lines()
    {
        s.push_str(&format!("  {line}\n"));
    }
    s.push_str("Events:\n");
    for line in events_text(&sv.events).lines() {
        s.push_str(&format!("  {line}\n"));
    }
    s
}

pub async fn describe(a: DescribeArgs) -> anyhow::Result<ExitCode> {
    let client = a.target.client()?;
    match kind_path(&a.kind)? {
        "models" => {
            let m = client.model(&a.name).await?;
            output::print(a.output, &m, || describe_model(&m))?;
        }
        "servers" => {
            let s = client.server(&a.name).await?;
            output::print(a.output, &s, || describe_server(&s))?;
        }
        "hpas" => crate::hpa::describe(&client, &a.name, a.output).await?,
        _ => bail!("describe supports model, server and hpa"),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Manifest files to check.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
}

/// Offline validation: prints every error; exit 0 when all files are valid.
pub fn validate(a: ValidateArgs) -> ExitCode {
    let mut ok = true;
    for f in &a.files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", f.display());
                ok = false;
                continue;
            }
        };
        match coscale_core::resources::parse_manifests(&f.display().to_string(), &text) {
            Ok(resources) => {
                for r in resources {
                    println!(
                        "{}: {}/{} valid",
                        f.display(),
                        r.kind().to_lowercase(),
                        r.name()
                    );
                }
            }
            Err(errs) => {
                eprintln!("{errs}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
