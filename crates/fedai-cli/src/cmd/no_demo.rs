//! `fedai demo` in a `fedai` built without the `demo` feature: say how to get it.

/// Start a relay, a worker and a real llama.cpp model in this process, and run one job (needs
/// the `demo` feature).
#[derive(clap::Args)]
pub struct Demo {
    /// Prompt to run.
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate.
    #[arg(long)]
    max_tokens: Option<u32>,
}

impl Demo {
    /// Explain how to build the demo in.
    pub async fn run(&self) -> anyhow::Result<()> {
        anyhow::bail!(
            "this `fedai` was built without the demo (it would link a relay and a worker into \
             every customer's binary); run `cargo run --release -p fedai-cli --features demo -- demo`"
        )
    }
}
