//! `fedai keygen`: a new key pair.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use fedai_protocol::nostr::prelude::*;

/// Generate a key pair.
#[derive(clap::Args)]
pub struct Keygen {
    /// Write the nsec to this file (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Keygen {
    /// Print (or write) the new key.
    pub fn run(&self) -> anyhow::Result<()> {
        keygen(self.out.as_ref())
    }
}

fn keygen(out: Option<&PathBuf>) -> anyhow::Result<()> {
    let k = Keys::generate();
    let nsec = k.secret_key().to_bech32()?;
    println!("npub: {}", k.public_key().to_bech32()?);
    match out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
            writeln!(f, "{nsec}")?;
            println!("nsec written to {} (mode 0600)", path.display());
        }
        None => println!("nsec: {nsec}"),
    }
    Ok(())
}
