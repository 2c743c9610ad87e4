//! What theory predicts for wrong results, to hold the simulation against.
//!
//! With `redundancy.count = 3` and quorum 2 the planner reveals the first
//! two commitments and completes when they agree; when they differ it
//! waits for the third, whose answer breaks the tie. Either way the job
//! takes the majority of its three answers: if the first two agree they
//! are that majority. So with each execution placed on a liar
//! independently with probability `g` (the liar fraction times how often a
//! liar lies):
//!
//! - **colluding liars** (one party behind many identities, every liar
//!   returning the same wrong CID): a wrong result is accepted when at
//!   least two of the three are liars, `3g²(1−g) + g³`;
//! - **independent liars** (each wrong answer its own CID): two wrong
//!   answers never match, so no wrong result reaches a quorum of 2. The
//!   same `3g²(1−g) + g³` of jobs instead end without a majority: with
//!   `max_extra = 0` they fail with "no consensus"; with extra executions
//!   they ask more nodes until the honest answer wins.
//!
//! The prediction assumes placement does not look at the liars: it holds
//! when the planner is blind to track records (the simulation's
//! `reputation: false`), and is an upper bound once reputation ranks the
//! caught liars last.

/// Chance that at least two of three independent draws hit, each with
/// chance `g`: the wrong-acceptance rate of colluding liars and the
/// no-majority rate of independent ones (see the module documentation).
pub fn two_of_three(g: f64) -> f64 {
    let g = g.clamp(0.0, 1.0);
    3.0 * g * g * (1.0 - g) + g * g * g
}

/// Predicted share of completed jobs whose accepted result is wrong, with
/// a liar fraction `liars` lying with probability `sometimes` each time.
pub fn wrong_accepted(liars: f64, sometimes: f64, collude: bool) -> f64 {
    if !collude {
        // Two independent wrong answers never agree.
        return 0.0;
    }
    two_of_three(liars * sometimes)
}

/// Predicted share of jobs left without a majority of three (independent
/// liars), before any extra executions.
pub fn no_majority(liars: f64, sometimes: f64, collude: bool) -> f64 {
    if collude {
        // Colluders always agree with each other: a majority always exists.
        return 0.0;
    }
    two_of_three(liars * sometimes)
}

/// The half-width of a 99.9% normal interval around a binomial share `p`
/// observed over `n` trials (0 for no trials).
pub fn binomial_halfwidth(p: f64, n: u64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    3.29 * (p * (1.0 - p) / n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_three_matches_enumeration() {
        for g in [0.0, 0.01, 0.1, 0.3, 0.5, 1.0] {
            let mut total = 0.0;
            for mask in 0u32..8 {
                let hits = mask.count_ones();
                let p = (0..3).map(|i| if mask & (1 << i) != 0 { g } else { 1.0 - g }).product::<f64>();
                if hits >= 2 {
                    total += p;
                }
            }
            assert!((two_of_three(g) - total).abs() < 1e-12, "g={g}");
        }
        assert!((two_of_three(0.3) - 0.216).abs() < 1e-12);
    }

    #[test]
    fn only_colluders_get_wrong_results_accepted() {
        assert_eq!(wrong_accepted(0.3, 1.0, false), 0.0);
        assert!((wrong_accepted(0.3, 1.0, true) - 0.216).abs() < 1e-12);
        assert!((no_majority(0.3, 1.0, false) - 0.216).abs() < 1e-12);
        assert_eq!(no_majority(0.3, 1.0, true), 0.0);
        // Lying half the time halves the effective fraction.
        assert!((wrong_accepted(0.2, 0.5, true) - two_of_three(0.1)).abs() < 1e-12);
    }
}
