//! Deciding a job's result from its executions' results.
//!
//! [`decide`] is pure: given the quorum, the results revealed so far, how
//! many live executions may still produce one, and how many extra
//! executions may still be granted, it says what to do. The rules:
//!
//! 1. **One vote per node.** Results are grouped by node. A node whose
//!    results all name the same CID casts one vote for it, however many
//!    executions it reported; a node that reported different CIDs casts no
//!    vote at all (it contradicts itself), and all of its executions count
//!    as dissenting whatever is agreed. Likewise an execution reported
//!    with two different results (or on two nodes) never votes and always
//!    dissents.
//! 2. **Agreed** when one CID (the leader) has at least `quorum` votes
//!    *and* more votes than any other CID could reach with every pending
//!    result: `votes > runner_up + pending`. So nothing still running can
//!    tie or overturn it, and a quorum below a majority never lets two
//!    CIDs win. Executions whose node voted for the leader are
//!    `agreeing`; every other execution is `dissenting`.
//! 3. **NoConsensus**, early, when even all pending results plus every
//!    extra execution could not lift any CID to `quorum`
//!    (`leader + pending + extra_left < quorum`).
//! 4. **Wait** while results are pending otherwise.
//! 5. With nothing pending, **NeedMore(n)**: the fewest new results that
//!    could make a winner, assuming they all agree with a leader: with a
//!    unique leader short of quorum, `quorum - votes`; with a tie at the top
//!    (e.g. 1–1 with quorum 2, or 1–1–1 with quorum 2), `max(quorum - votes,
//!    1)`; with no results, `quorum`. Granted only if `n <= extra_left`;
//!    otherwise **NoConsensus** (asking for fewer could not decide it).
//!
//! A `quorum` of 0 is taken as 1. The verdict does not depend on the order
//! of `revealed`: votes are counted in maps, identical triples count once,
//! and every list in a verdict is sorted (executions by id; results in
//! [`Verdict::NoConsensus`] by CID bytes, then execution id). CID bytes
//! order listings only: a winner is never picked by comparing CIDs.

use std::collections::{BTreeMap, BTreeSet};

use shoal_storage::Cid;

use crate::model::{ExecId, NodeId};

/// What to do about a job's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The job's result is decided.
    Agreed {
        /// The agreed result.
        result: Cid,
        /// Executions that reported it (sorted).
        agreeing: Vec<ExecId>,
        /// Executions that reported anything else (sorted).
        dissenting: Vec<ExecId>,
    },
    /// Pending executions could still decide it: nothing to do yet.
    Wait,
    /// Run this many extra executions (never more than `extra_left`).
    NeedMore(usize),
    /// No result can be agreed.
    NoConsensus {
        /// Every result, sorted by CID bytes then execution id.
        results: Vec<(ExecId, NodeId, Cid)>,
    },
}

/// Decides what `revealed` results (execution, node, result) amount to
/// under `quorum`, with `pending` live executions that may still produce a
/// result and `extra_left` extra executions that may still be granted.
/// See the module documentation for the rules.
pub fn decide(quorum: usize, revealed: &[(ExecId, NodeId, Cid)], pending: usize, extra_left: usize) -> Verdict {
    let quorum = quorum.max(1);
    let Tally { cids, by_exec, ballots, votes } = tally(revealed);
    let mut counts: Vec<usize> = votes.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let best = counts.first().copied().unwrap_or(0);
    let runner_up = counts.get(1).copied().unwrap_or(0);

    if best >= quorum && best > runner_up.saturating_add(pending) {
        // best > runner_up: exactly one CID has `best` votes.
        let winner = votes.iter().find(|(_, &v)| v == best).map(|(b, _)| b.clone());
        if let Some(result) = winner.as_ref().and_then(|b| cids.get(b)) {
            // A clean execution whose node's one ballot is the winner.
            let voted = |e: &ExecId| match by_exec.get(e).map(|v| v.iter().collect::<Vec<_>>()).as_deref() {
                Some([(n, b)]) => Some(b) == winner.as_ref() && ballots.get(n) == Some(b),
                _ => false,
            };
            let (agreeing, dissenting): (Vec<ExecId>, Vec<ExecId>) =
                by_exec.keys().map(|e| (*e).clone()).partition(|e| voted(e));
            return Verdict::Agreed { result: *result, agreeing, dissenting };
        }
    }
    if best.saturating_add(pending).saturating_add(extra_left) < quorum {
        return no_consensus(revealed);
    }
    if pending > 0 {
        return Verdict::Wait;
    }
    // Short of quorum, or tied at the top (where one more could break it).
    let need = quorum.saturating_sub(best).max(1);
    if need <= extra_left {
        Verdict::NeedMore(need)
    } else {
        no_consensus(revealed)
    }
}

/// The votes each result has, by the rules above: an execution reported
/// with two results (or on two nodes) contradicts itself and never votes;
/// a node votes once, and only if its clean executions agree.
struct Tally<'a> {
    /// Each result by its CID bytes (everything is keyed by them, so that
    /// nothing depends on input order).
    cids: BTreeMap<Vec<u8>, Cid>,
    /// What each execution was reported with.
    by_exec: BTreeMap<&'a ExecId, BTreeSet<(&'a NodeId, Vec<u8>)>>,
    /// The one result each voting node voted for.
    ballots: BTreeMap<&'a NodeId, Vec<u8>>,
    /// Votes per result.
    votes: BTreeMap<Vec<u8>, usize>,
}

fn tally(revealed: &[(ExecId, NodeId, Cid)]) -> Tally<'_> {
    let mut by_exec: BTreeMap<&ExecId, BTreeSet<(&NodeId, Vec<u8>)>> = BTreeMap::new();
    let mut cids: BTreeMap<Vec<u8>, Cid> = BTreeMap::new();
    for (e, n, c) in revealed {
        let b = c.to_bytes();
        cids.entry(b.clone()).or_insert(*c);
        by_exec.entry(e).or_default().insert((n, b));
    }
    let mut by_node: BTreeMap<&NodeId, BTreeSet<&Vec<u8>>> = BTreeMap::new();
    for v in by_exec.values().filter(|v| v.len() == 1) {
        for (n, b) in v {
            by_node.entry(*n).or_default().insert(b);
        }
    }
    let ballots: BTreeMap<&NodeId, Vec<u8>> = by_node
        .into_iter()
        .filter_map(|(n, bs)| match bs.into_iter().collect::<Vec<_>>().as_slice() {
            [only] => Some((n, (*only).clone())),
            _ => None,
        })
        .collect();
    let mut votes: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for b in ballots.values() {
        *votes.entry(b.clone()).or_default() += 1;
    }
    Tally { cids, by_exec, ballots, votes }
}

/// The most votes any one result has in `revealed` (see [`decide`]).
pub fn lead(revealed: &[(ExecId, NodeId, Cid)]) -> usize {
    tally(revealed).votes.into_values().max().unwrap_or(0)
}

fn no_consensus(revealed: &[(ExecId, NodeId, Cid)]) -> Verdict {
    let unique: BTreeSet<(Vec<u8>, &ExecId, &NodeId, &Cid)> =
        revealed.iter().map(|(e, n, c)| (c.to_bytes(), e, n, c)).collect();
    Verdict::NoConsensus { results: unique.into_iter().map(|(_, e, n, c)| (e.clone(), n.clone(), *c)).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cid(n: u8) -> Cid {
        *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, vec![n]).cid()
    }

    fn r(e: &str, n: &str, c: u8) -> (ExecId, NodeId, Cid) {
        (e.parse().unwrap(), n.to_string(), cid(c))
    }

    fn ids(v: &[&str]) -> Vec<ExecId> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn single_result_with_quorum_one_agrees() {
        let v = decide(1, &[r("e1", "a", 1)], 0, 0);
        assert_eq!(v, Verdict::Agreed { result: cid(1), agreeing: ids(&["e1"]), dissenting: vec![] });
    }

    #[test]
    fn majority_agrees_and_names_the_minority() {
        let v = decide(2, &[r("e1", "a", 1), r("e2", "b", 2), r("e3", "c", 1)], 0, 0);
        assert_eq!(v, Verdict::Agreed { result: cid(1), agreeing: ids(&["e1", "e3"]), dissenting: ids(&["e2"]) });
    }

    #[test]
    fn a_lead_that_pending_results_could_tie_waits() {
        // 2 vs 1 with 1 pending: the pending one could make it 2-2.
        assert_eq!(decide(2, &[r("e1", "a", 1), r("e2", "b", 1), r("e3", "c", 2)], 1, 0), Verdict::Wait);
        // 2 vs 0 with 1 pending: cannot be caught.
        assert!(matches!(decide(2, &[r("e1", "a", 1), r("e2", "b", 1)], 1, 0), Verdict::Agreed { .. }));
    }

    #[test]
    fn ties_ask_for_one_more_or_give_up() {
        let tie = [r("e1", "a", 1), r("e2", "b", 2)];
        assert_eq!(decide(2, &tie, 0, 1), Verdict::NeedMore(1));
        assert_eq!(decide(2, &tie, 0, 0), Verdict::NoConsensus { results: sorted(&tie) });
        let three = [r("e1", "a", 1), r("e2", "b", 2), r("e3", "c", 3)];
        assert_eq!(decide(2, &three, 0, 5), Verdict::NeedMore(1));
        // A quorum of 1 with two different answers is a tie too.
        assert_eq!(decide(1, &tie, 0, 1), Verdict::NeedMore(1));
    }

    #[test]
    fn short_of_quorum_asks_for_the_difference() {
        assert_eq!(decide(3, &[r("e1", "a", 1), r("e2", "b", 1)], 0, 2), Verdict::NeedMore(1));
        assert_eq!(decide(3, &[r("e1", "a", 1)], 0, 2), Verdict::NeedMore(2));
        assert_eq!(decide(3, &[], 0, 3), Verdict::NeedMore(3));
        assert!(matches!(decide(3, &[r("e1", "a", 1)], 0, 1), Verdict::NoConsensus { .. }));
    }

    #[test]
    fn hopeless_gives_up_without_waiting() {
        // 3 needed, 1 in hand, 1 pending and no extras: 2 at most.
        assert!(matches!(decide(3, &[r("e1", "a", 1)], 1, 0), Verdict::NoConsensus { .. }));
        assert_eq!(decide(3, &[r("e1", "a", 1)], 1, 1), Verdict::Wait);
    }

    #[test]
    fn a_node_counts_once() {
        // Node a reports the same CID twice: one vote, both executions agree.
        let v = decide(2, &[r("e1", "a", 1), r("e2", "a", 1), r("e3", "b", 2)], 0, 0);
        assert!(matches!(v, Verdict::NoConsensus { .. }), "{v:?}");
        let v = decide(2, &[r("e1", "a", 1), r("e2", "a", 1), r("e3", "b", 1)], 0, 0);
        assert_eq!(v, Verdict::Agreed { result: cid(1), agreeing: ids(&["e1", "e2", "e3"]), dissenting: vec![] });
        // Node a contradicts itself: no vote, and it dissents.
        let v = decide(2, &[r("e1", "a", 1), r("e2", "a", 2), r("e3", "b", 1), r("e4", "c", 1)], 0, 0);
        assert_eq!(v, Verdict::Agreed { result: cid(1), agreeing: ids(&["e3", "e4"]), dissenting: ids(&["e1", "e2"]) });
        // The same triple twice is one result.
        let v = decide(1, &[r("e1", "a", 1), r("e1", "a", 1)], 0, 0);
        assert_eq!(v, Verdict::Agreed { result: cid(1), agreeing: ids(&["e1"]), dissenting: vec![] });
        // The lead counts votes by the same rules.
        assert_eq!(lead(&[r("e1", "a", 1), r("e2", "a", 1), r("e3", "b", 1)]), 2);
        assert_eq!(lead(&[r("e1", "a", 1), r("e2", "a", 2), r("e3", "b", 1)]), 1);
        assert_eq!(lead(&[]), 0);
    }

    #[test]
    fn zero_quorum_is_one() {
        assert_eq!(decide(0, &[r("e1", "a", 1)], 0, 0), decide(1, &[r("e1", "a", 1)], 0, 0));
    }

    fn sorted(v: &[(ExecId, NodeId, Cid)]) -> Vec<(ExecId, NodeId, Cid)> {
        let mut v = v.to_vec();
        v.sort_by(|a, b| (a.2.to_bytes(), &a.0).cmp(&(b.2.to_bytes(), &b.0)));
        v
    }

    fn arb_results() -> impl Strategy<Value = Vec<(ExecId, NodeId, Cid)>> {
        proptest::collection::vec((0u8..12, 0u8..6, 0u8..3), 0..10).prop_map(|v| {
            v.into_iter().map(|(e, n, c)| (format!("e{e}").parse().unwrap(), format!("n{n}"), cid(c))).collect()
        })
    }

    proptest! {
        #[test]
        fn order_does_not_matter(rs in arb_results(), seed in any::<u64>(), q in 0usize..5, p in 0usize..3, x in 0usize..3) {
            let mut shuffled = rs.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(decide(q, &rs, p, x), decide(q, &shuffled, p, x));
        }

        #[test]
        fn verdicts_are_sound(rs in arb_results(), q in 1usize..5, p in 0usize..3, x in 0usize..3) {
            match decide(q, &rs, p, x) {
                Verdict::Agreed { result, agreeing, dissenting } => {
                    // Enough distinct nodes back it, and every execution is listed once.
                    let nodes: BTreeSet<&NodeId> = rs.iter().filter(|(e, _, _)| agreeing.contains(e)).map(|(_, n, _)| n).collect();
                    prop_assert!(nodes.len() >= q);
                    prop_assert!(rs.iter().filter(|(e, _, _)| agreeing.contains(e)).all(|(_, _, c)| *c == result));
                    let all: BTreeSet<&ExecId> = rs.iter().map(|(e, _, _)| e).collect();
                    prop_assert_eq!(agreeing.len() + dissenting.len(), all.len());
                }
                Verdict::NeedMore(n) => { prop_assert!(n >= 1 && n <= x); prop_assert_eq!(p, 0); }
                Verdict::Wait => prop_assert!(p > 0),
                Verdict::NoConsensus { results } => {
                    let unique: BTreeSet<_> = rs.iter().map(|(e, n, c)| (e.clone(), n.clone(), c.to_bytes())).collect();
                    prop_assert_eq!(results.len(), unique.len());
                }
            }
        }
    }
}
