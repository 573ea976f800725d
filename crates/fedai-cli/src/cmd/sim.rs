//! `fedai sim`: run a market scenario through the simulator (the scheduler, unchanged).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Simulate a market scenario with the real scheduler (no network).
#[derive(clap::Args)]
pub struct Sim {
    /// Scenario file (TOML; see crates/fedai-sim/scenarios/).
    scenario: PathBuf,
    /// Sweep one parameter: `param=v1,v2,…` (dotted path, e.g. `client.top_n=1,3,5`).
    #[arg(long)]
    sweep: Option<String>,
    /// Override the number of jobs.
    #[arg(long)]
    jobs: Option<u64>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the reports as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the full Markdown report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

impl Sim {
    /// Run the scenario.
    pub fn run(&self) -> anyhow::Result<()> {
        run(
            &self.scenario,
            self.sweep.as_deref(),
            self.jobs,
            self.seed,
            self.json.as_ref(),
            self.markdown.as_ref(),
        )
    }
}

/// Run `file` (all its sweep variants, or `sweep` over it), print Markdown, optionally write
/// the JSON reports and the Markdown.
pub fn run(
    file: &Path,
    sweep: Option<&str>,
    jobs: Option<u64>,
    seed: Option<u64>,
    json: Option<&PathBuf>,
    markdown: Option<&PathBuf>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut s = fedai_sim::Scenario::from_toml(&text)?;
    if let Some(j) = jobs {
        s.jobs = j;
    }
    if let Some(seed) = seed {
        s.seed = seed;
    }
    let over = sweep.map(fedai_sim::parse_sweep).transpose()?;
    let t = std::time::Instant::now();
    let rows = fedai_sim::run_all(&s, over.as_ref())?;
    let wall = t.elapsed().as_secs_f64();
    let mut md = format!("# {}\n\n{}\n\n", s.name, s.question);
    if rows.len() > 1 {
        md += &fedai_sim::sweep_table(&rows);
        md += "\n";
    }
    for (label, r) in &rows {
        if !label.is_empty() {
            md += &format!("### {label}\n\n");
        }
        md += &r.to_markdown();
        md += "\n";
    }
    let total: u64 = rows.iter().map(|(_, r)| r.jobs).sum();
    md += &format!(
        "_{total} simulated jobs in {wall:.2} s (seed {})._\n",
        s.seed
    );
    if let Some(p) = markdown {
        std::fs::write(p, &md).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(p) = json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(label, r)| serde_json::json!({ "variant": label, "report": r }))
            .collect();
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    // The terminal gets the summary table (or the single report without its worker rows).
    if rows.len() > 1 {
        print!(
            "# {}\n\n{}\n\n{}",
            s.name,
            s.question,
            fedai_sim::sweep_table(&rows)
        );
    } else {
        let r = &rows[0].1;
        let head: String = r
            .to_markdown()
            .split("\n\n| worker")
            .next()
            .unwrap_or("")
            .to_owned();
        println!("{head}");
    }
    println!("\n{total} simulated jobs in {wall:.2} s");
    Ok(())
}
