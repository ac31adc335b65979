//! Linearizability checking for a register with compare-and-set, per key (Wing & Gong's search
//! with Lowe's memoisation of (linearized set, state) pairs).
//!
//! An operation whose outcome is unknown may have taken effect at any time after it was invoked,
//! or never: it is linearized where that helps, or left out. Failed operations and unknown reads
//! constrain nothing and are dropped before the search.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::history::{Event, Op, Outcome};

/// A key whose history has no linearization.
#[derive(Debug, Clone)]
pub struct Violation {
    pub key: String,
    /// The history of that key, and a smaller sub-history that still fails.
    pub history: Vec<Event>,
    pub minimal: Vec<Event>,
}

/// The result of one register operation applied to `value`, if it is consistent with what the
/// client saw.
fn step(value: &Option<String>, op: &Op, outcome: &Outcome) -> Option<Option<String>> {
    match (op, outcome) {
        (Op::Read, Outcome::Read(seen)) => (seen == value).then(|| value.clone()),
        (Op::Write(v), Outcome::Ok | Outcome::Unknown) => Some(Some(v.clone())),
        (Op::Cas { expected, new }, Outcome::Ok | Outcome::Unknown) => {
            (value == expected).then(|| Some(new.clone()))
        }
        (Op::Cas { expected, .. }, Outcome::CasFailed) => {
            (value != expected).then(|| value.clone())
        }
        _ => None,
    }
}

struct Search<'a> {
    ops: &'a [Event],
    /// Completion time, `u64::MAX` for unknown outcomes.
    ret: Vec<u64>,
    required: usize,
    done: Vec<bool>,
    /// Zobrist keys: the linearized set is memoised by the XOR of its members' keys, so a
    /// visited state costs 16 bytes whatever the history's length.
    zobrist: Vec<u64>,
    seen: HashSet<(u64, u64)>,
    deadline: Instant,
    timed_out: bool,
}

fn value_hash(v: &Option<String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl Search<'_> {
    /// `lo`: the first op not yet linearized; `set`: Zobrist hash of the linearized set.
    fn run(
        &mut self,
        lo: usize,
        set: u64,
        linearized_required: usize,
        value: &Option<String>,
    ) -> bool {
        if linearized_required == self.required {
            return true;
        }
        if Instant::now() > self.deadline {
            self.timed_out = true;
            return false;
        }
        if !self.seen.insert((set, value_hash(value))) {
            return false;
        }
        // Only an op invoked before every pending op's completion can come next. Ops are sorted
        // by invocation, so once one starts after the earliest pending completion, so do all
        // later ones (and none of them can complete earlier).
        let mut min_ret = u64::MAX;
        for i in lo..self.ops.len() {
            if self.ops[i].invoke_us > min_ret {
                break;
            }
            if !self.done[i] {
                min_ret = min_ret.min(self.ret[i]);
            }
        }
        for i in lo..self.ops.len() {
            if self.done[i] {
                continue;
            }
            let e = &self.ops[i];
            if e.invoke_us > min_ret {
                break;
            }
            let Some(next) = step(value, &e.op, &e.outcome) else {
                continue;
            };
            self.done[i] = true;
            let mut next_lo = lo;
            while next_lo < self.ops.len() && self.done[next_lo] {
                next_lo += 1;
            }
            let req = usize::from(self.ret[i] != u64::MAX);
            let ok = self.run(
                next_lo,
                set ^ self.zobrist[i],
                linearized_required + req,
                &next,
            );
            self.done[i] = false;
            if ok {
                return true;
            }
            if self.timed_out {
                return false;
            }
        }
        false
    }
}

/// `Ok(true)`: linearizable; `Ok(false)`: not; `Err`: the search ran out of time.
pub fn linearizable(events: &[Event], budget: Duration) -> Result<bool, String> {
    let mut ops: Vec<Event> = events.iter().filter(|e| e.matters()).cloned().collect();
    ops.sort_by_key(|e| e.invoke_us);
    let ret: Vec<u64> = ops
        .iter()
        .map(|e| match e.outcome {
            Outcome::Unknown => u64::MAX,
            _ => e.complete_us.unwrap_or(u64::MAX),
        })
        .collect();
    let required = ret.iter().filter(|r| **r != u64::MAX).count();
    let mut search = Search {
        ops: &ops,
        ret,
        required,
        done: vec![false; ops.len()],
        zobrist: (0..ops.len()).map(|_| rand::random()).collect(),
        seen: HashSet::new(),
        deadline: Instant::now() + budget,
        timed_out: false,
    };
    let ok = search.run(0, 0, 0, &None);
    if search.timed_out {
        return Err(format!(
            "search exceeded {budget:?} on {} operations",
            ops.len()
        ));
    }
    Ok(ok)
}

/// Shrinks a failing history by dropping operations while it still fails (greedy, bounded).
pub fn minimize(events: &[Event], budget: Duration) -> Vec<Event> {
    let deadline = Instant::now() + budget;
    let mut current: Vec<Event> = events.iter().filter(|e| e.matters()).cloned().collect();
    // Dropping a write whose value some remaining op observed would turn that observation into
    // a phantom and "explain" the failure by a violation of our own making.
    let observed = |events: &[Event], value: &str| {
        events.iter().any(|e| match (&e.op, &e.outcome) {
            (_, Outcome::Read(Some(v))) => v == value,
            (
                Op::Cas {
                    expected: Some(x), ..
                },
                _,
            ) => x == value,
            _ => false,
        })
    };
    let mut i = 0;
    while i < current.len() && Instant::now() < deadline {
        let written = match (&current[i].op, &current[i].outcome) {
            (Op::Write(v), _) => Some(v.clone()),
            (Op::Cas { new, .. }, Outcome::Ok | Outcome::Unknown) => Some(new.clone()),
            _ => None,
        };
        if written.is_some_and(|v| observed(&current, &v)) {
            i += 1;
            continue;
        }
        let mut candidate = current.clone();
        candidate.remove(i);
        if linearizable(&candidate, Duration::from_secs(1)) == Ok(false) {
            current = candidate;
        } else {
            i += 1;
        }
    }
    current
}

/// Checks every key; returns the violations found and the keys the search could not finish.
pub fn check(
    events: &[Event],
    budget_per_key: Duration,
) -> (Vec<Violation>, Vec<(String, String)>) {
    let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key.as_str()).or_default().push(e.clone());
    }
    let mut violations = Vec::new();
    let mut inconclusive = Vec::new();
    for (key, history) in by_key {
        // Run the search on a thread with a deep stack: its depth is the history's length.
        let h = history.clone();
        let result = std::thread::Builder::new()
            .stack_size(512 * 1024 * 1024)
            .spawn(move || linearizable(&h, budget_per_key))
            .map_err(|e| e.to_string())
            .and_then(|t| t.join().map_err(|_| "checker thread panicked".to_string()))
            .and_then(|r| r);
        match result {
            Ok(true) => {}
            Ok(false) => {
                let h = history.clone();
                let minimal = std::thread::Builder::new()
                    .stack_size(512 * 1024 * 1024)
                    .spawn(move || minimize(&h, Duration::from_secs(20)))
                    .ok()
                    .and_then(|t| t.join().ok())
                    .unwrap_or_default();
                violations.push(Violation {
                    key: key.to_string(),
                    history,
                    minimal,
                });
            }
            Err(why) => inconclusive.push((key.to_string(), why)),
        }
    }
    (violations, inconclusive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, op: Op, invoke: u64, complete: Option<u64>, outcome: Outcome) -> Event {
        Event {
            client,
            key: "k".into(),
            op,
            invoke_us: invoke,
            complete_us: complete,
            outcome,
            node: 0,
            api: crate::history::Api::Seed,
        }
    }
    fn w(v: &str) -> Op {
        Op::Write(v.into())
    }
    fn r(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(String::from))
    }
    fn ok(h: &[Event]) -> bool {
        linearizable(h, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(0, Op::Read, 20, Some(30), r(Some("a"))),
            ev(
                0,
                Op::Cas {
                    expected: Some("a".into()),
                    new: "b".into(),
                },
                40,
                Some(50),
                Outcome::Ok,
            ),
            ev(
                0,
                Op::Cas {
                    expected: Some("a".into()),
                    new: "c".into(),
                },
                60,
                Some(70),
                Outcome::CasFailed,
            ),
            ev(0, Op::Read, 80, Some(90), r(Some("b"))),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn concurrent_ops_may_order_either_way() {
        let h = vec![
            ev(0, w("a"), 0, Some(100), Outcome::Ok),
            ev(1, w("b"), 10, Some(90), Outcome::Ok),
            ev(2, Op::Read, 120, Some(130), r(Some("a"))),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn stale_read_is_caught() {
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(0, w("b"), 20, Some(30), Outcome::Ok),
            ev(1, Op::Read, 40, Some(50), r(Some("a"))),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn lost_write_is_caught() {
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, Op::Read, 20, Some(30), r(None)),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn phantom_value_is_caught() {
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, Op::Read, 20, Some(30), r(Some("never-written"))),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn a_cas_that_both_won_is_caught() {
        let cas = |new: &str| Op::Cas {
            expected: None,
            new: new.into(),
        };
        let h = vec![
            ev(0, cas("x"), 0, Some(10), Outcome::Ok),
            ev(1, cas("y"), 20, Some(30), Outcome::Ok),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn unknown_write_may_or_may_not_have_happened() {
        let seen = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, w("b"), 20, None, Outcome::Unknown),
            ev(2, Op::Read, 30, Some(40), r(Some("b"))),
            ev(2, Op::Read, 50, Some(60), r(Some("b"))),
        ];
        assert!(ok(&seen));
        let not_seen = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, w("b"), 20, None, Outcome::Unknown),
            ev(2, Op::Read, 30, Some(40), r(Some("a"))),
        ];
        assert!(ok(&not_seen));
        // ...but once seen, it cannot un-happen.
        let flicker = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, w("b"), 20, None, Outcome::Unknown),
            ev(2, Op::Read, 30, Some(40), r(Some("b"))),
            ev(2, Op::Read, 50, Some(60), r(Some("a"))),
        ];
        assert!(!ok(&flicker));
    }

    #[test]
    fn failed_ops_have_no_effect() {
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(1, w("b"), 20, Some(30), Outcome::Failed),
            ev(2, Op::Read, 40, Some(50), r(Some("b"))),
        ];
        assert!(!ok(&h), "a failed write must not be visible");
    }

    #[test]
    fn minimize_never_invents_a_phantom() {
        // A stale read: the minimal history must keep the writes the reads observed.
        let h = vec![
            ev(0, w("a"), 0, Some(10), Outcome::Ok),
            ev(0, w("b"), 20, Some(30), Outcome::Ok),
            ev(1, Op::Read, 40, Some(50), r(Some("b"))),
            ev(1, Op::Read, 60, Some(70), r(Some("a"))),
        ];
        let m = minimize(&h, Duration::from_secs(5));
        assert!(!ok(&m));
        for e in &m {
            if let Outcome::Read(Some(v)) = &e.outcome {
                assert!(
                    m.iter().any(|x| x.op == Op::Write(v.clone())),
                    "phantom {v} in {m:?}"
                );
            }
        }
    }

    #[test]
    fn minimize_keeps_a_failing_core() {
        let mut h = vec![ev(0, w("a"), 0, Some(10), Outcome::Ok)];
        for i in 0..20 {
            h.push(ev(
                1,
                Op::Read,
                20 + i * 10,
                Some(25 + i * 10),
                r(Some("a")),
            ));
        }
        h.push(ev(2, Op::Read, 500, Some(510), r(None)));
        assert!(!ok(&h));
        let m = minimize(&h, Duration::from_secs(5));
        assert!(m.len() <= 3, "{m:?}");
        assert!(!ok(&m));
    }
}
