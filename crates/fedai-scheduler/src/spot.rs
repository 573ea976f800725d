//! Spot checks ("mystery shopper"): a customer re-runs a small fraction of its jobs, with a
//! fixed seed, on other workers serving the same model, and compares the answers. A worker that
//! serves a smaller or different model than it advertises answers differently from honest ones
//! from the first tokens on. Pure decisions, shared by the client and the simulator.

/// Spot checks a worker must fail (each a verdict of two other workers that agree) before a
/// customer stops choosing it for good: one verdict could be two colluding referees.
pub const EXCLUDE_AFTER: u32 = 2;

/// Whether two answers to the same request with the same seed agree: their common prefix covers
/// at least half of the longer one (leading whitespace aside). Honest runners of one model
/// agree exactly, or part late (floating-point differences between hardware change a token
/// deep into a long answer); a different model parts within the first tokens. Measured
/// against the longer answer, so "Paris." does not agree with "Paris is in Germany".
pub fn outputs_agree(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_start(), b.trim_start());
    let longer = a.chars().count().max(b.chars().count());
    if longer == 0 {
        return true;
    }
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    common * 2 >= longer
}

/// What a set of answers to one spot-checked request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every answer agrees with every other.
    Agree,
    /// The answer at this index disagrees with all the others, which agree among themselves:
    /// its worker is caught.
    OddOneOut(usize),
    /// Nothing can be concluded (two answers that differ: either may be the honest one).
    Undecided,
}

/// The verdict on `outputs` (answers to one request with one seed, one per worker).
pub fn verdict(outputs: &[&str]) -> Verdict {
    let n = outputs.len();
    let agree = |i: usize, j: usize| outputs_agree(outputs[i], outputs[j]);
    if (0..n).all(|i| (i + 1..n).all(|j| agree(i, j))) {
        return Verdict::Agree;
    }
    if n >= 3 {
        for odd in 0..n {
            let others: Vec<usize> = (0..n).filter(|k| *k != odd).collect();
            let others_agree = others
                .iter()
                .all(|&i| others.iter().all(|&j| i == j || agree(i, j)));
            if others_agree && others.iter().all(|&k| !agree(odd, k)) {
                return Verdict::OddOneOut(odd);
            }
        }
    }
    Verdict::Undecided
}

/// Whether to spot-check the next job, given the fraction `rate` and a uniform draw in [0, 1).
pub fn pick(rate: f64, draw: f64) -> bool {
    rate > 0.0 && draw < rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_a_long_common_prefix() {
        assert!(outputs_agree(
            "the cat sat on the mat",
            "the cat sat on the mat"
        ));
        assert!(outputs_agree(
            "the cat sat on the mat",
            "the cat sat on a rug!"
        ));
        assert!(!outputs_agree(
            "the cat sat on the mat",
            "a dog ran in the park"
        ));
        assert!(!outputs_agree(
            "Paris.",
            "Paris is in Germany, said the model"
        ));
        assert!(outputs_agree(" leading space", "leading space"));
        assert!(!outputs_agree("x", ""));
        assert!(outputs_agree("", ""));
    }

    #[test]
    fn the_odd_one_out_needs_two_that_agree() {
        let (h, c) = ("honest answer here", "cheater says other");
        assert_eq!(verdict(&[h, h]), Verdict::Agree);
        assert_eq!(verdict(&[c, h]), Verdict::Undecided);
        assert_eq!(verdict(&[c, h, h]), Verdict::OddOneOut(0));
        assert_eq!(verdict(&[h, c, h]), Verdict::OddOneOut(1));
        assert_eq!(
            verdict(&[h, c, "third different thing"]),
            Verdict::Undecided
        );
        assert!(pick(0.5, 0.49) && !pick(0.5, 0.5) && !pick(0.0, 0.0));
    }
}
