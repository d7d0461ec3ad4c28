//! `sluice health [--url …]`: exits 0 when the endpoint answers 200 — the
//! container image's HEALTHCHECK, which has no curl.

use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The endpoint to ask (`/healthz`: alive; `/readyz`: ready for traffic).
    #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
    pub url: String,
}

pub(crate) fn execute(args: HealthArgs) -> anyhow::Result<()> {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build(),
    );
    let mut response = agent
        .get(&args.url)
        .call()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.url))?;
    let status = response.status();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if status != 200 {
        anyhow::bail!("{}: {status} {}", args.url, body.trim());
    }
    println!("{}", body.trim());
    Ok(())
}
