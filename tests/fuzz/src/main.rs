//! `fedai-fuzz`: every target fed its seeds, then random mutations of them, for a bounded time
//! — on stable Rust, without coverage guidance (that is what the libFuzzer harnesses in
//! `libfuzzer/` add). A panic prints the input (hex), saves it under `--crashes` and exits 1.
//!
//! `fedai-fuzz [--seconds N] [--seed S] [--crashes DIR] [TARGET…]` (all targets when none):
//! N seconds per target (default 10), S seeds the mutations (default: the clock; printed so a
//! run can be repeated).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedai_fuzz::TARGETS;

/// Tokens the mutator inserts: the syntax and words these parsers branch on.
const DICT: &[&[u8]] = &[
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"0",
    b"-1",
    b"18446744073709551615",
    b"1e999",
    b"null",
    b"true",
    b"\"\"",
    b"[]",
    b"{}",
    b"\"e\"",
    b"\"p\"",
    b"\"i\"",
    b"\"t\"",
    b"\"fedai\"",
    b"\"amount\"",
    b"\"bolt11\"",
    b"\"param\"",
    b"\"max_tokens\"",
    b"\"encrypted\"",
    b"\"status\"",
    b"\"ERROR\"",
    b"\"result\"",
    b"\"error\"",
    b"\"state\"",
    b"\"ACCEPTED\"",
    b"\"SUCCEEDED\"",
    b"lnsb",
    b"lnbc",
    b"lnurl1",
    b"@",
    b"https://",
    b"GET / HTTP/1.1",
    b"Upgrade: websocket",
    b"Sec-WebSocket-Key: ",
    b"\"description\"",
    b"\"preimage\"",
    b"\"k\":",
    b"\"t\":",
];

/// xorshift64*: small, fast, and repeatable from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `input`, spliced with `other` sometimes; bounded in length.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'\\', b'\n', b'9'][rng.below(8)];
            }
            2 => {
                let tok = DICT[rng.below(DICT.len())];
                v.splice(at..at, tok.iter().copied());
            }
            3 if !v.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            4 if !v.is_empty() => {
                // Repeat a slice: deep nesting and long runs.
                let start = rng.below(v.len());
                let end = (start + 1 + rng.below(32)).min(v.len());
                let piece: Vec<u8> = v[start..end].to_vec();
                for _ in 0..=rng.below(8) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                v.splice(at..at, other[start..end].iter().copied());
            }
            6 => {
                let n = rng.below(8) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            _ => v.truncate(at),
        }
    }
    v.truncate(64 * 1024);
    v
}

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    out.sort();
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// Seeds, then random mutations of them, for a bounded time per target.
#[derive(clap::Parser)]
struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seed of the mutations (default: the clock; printed so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Where a crashing input is saved.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
    /// Targets to run (all when none).
    targets: Vec<String>,
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    let seed_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    // The panics this looks for are reported once, with the input, below.
    std::panic::set_hook(Box::new(|_| {}));
    println!("fedai-fuzz: seed {seed} ({} s per target)", a.seconds);
    let mut failed = false;
    for (name, target) in TARGETS {
        if !a.targets.is_empty() && !a.targets.iter().any(|t| t == name) {
            continue;
        }
        let corpus = seeds(&seed_root.join(name));
        let mut rng = Rng(seed);
        let (start, mut runs) = (Instant::now(), 0u64);
        let budget = Duration::from_secs(a.seconds);
        let mut n = 0usize;
        while n < corpus.len() || start.elapsed() < budget {
            let input = match corpus.get(n) {
                Some(seed) => seed.clone(),
                None => {
                    let base = &corpus[rng.below(corpus.len())];
                    let other = &corpus[rng.below(corpus.len())];
                    mutate(&mut rng, base, other)
                }
            };
            n += 1;
            runs += 1;
            if std::panic::catch_unwind(|| target(&input)).is_err() {
                failed = true;
                let _ = std::fs::create_dir_all(&a.crashes);
                let file = a.crashes.join(format!("{name}-{runs}"));
                let _ = std::fs::write(&file, &input);
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!(
                    "fedai-fuzz: {name} PANICKED on input {hex} (saved to {})",
                    file.display()
                );
                break;
            }
        }
        println!(
            "fedai-fuzz: {name}: {runs} inputs ({} seeds) in {:.1} s",
            corpus.len(),
            start.elapsed().as_secs_f64()
        );
    }
    if failed {
        std::process::exit(1);
    }
}
