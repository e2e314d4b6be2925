//! The ledger: what has happened, as far as limits care (executions,
//! failures, successes, runs in flight, the notification being decided).
//!
//! Indexed: executions are kept as sorted times per policy, per (policy,
//! playbook) and per (policy, playbook, target), outcomes per (policy,
//! playbook), so a rate-limit count, a cooldown or a failure count is a
//! binary search, not a walk over every earlier execution. With a horizon
//! (the longest window of the policies, see `pipeline::horizon`), entries
//! older than the newest time minus the horizon are dropped as new ones
//! come in, so memory is bounded by what the windows can see.

use hashbrown::HashMap;

use chrono::{DateTime, Utc};

use super::model::RateScope;

/// A canonical key for a target: `kind|field=value|...` in field order.
pub fn target_key(target: &crate::drivers::Target) -> String {
    // Sized once: built for every decision, it would otherwise grow 3 or 4 times.
    let len = target.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut s = String::with_capacity(len);
    for (i, (k, v)) in target.iter().enumerate() {
        if i > 0 {
            s.push('|');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// The value under `key`, inserted (default) if missing: the key is
/// allocated only then, not on every lookup (the decision path calls this
/// for every charged decision).
fn entry<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    map.entry_ref(key).or_default()
}

/// Times in ascending order, run-length encoded: equal times (a batch
/// decided at one `now`) are one run. Each run carries the number of
/// entries before it (a running count, wrapping), so counting the entries
/// after a time is a binary search. Appending in time order is O(1); a
/// time out of order (an `--at` what-if) is inserted in place.
#[derive(Debug, Default, Clone)]
pub(super) struct Times {
    runs: std::collections::VecDeque<Run>,
    /// The running count after the last run.
    end: u32,
    /// Where the last window started (a guess, checked before use):
    /// consecutive decisions ask about nearly the same window.
    hint: std::cell::Cell<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    at: DateTime<Utc>,
    /// The running count before this run's entries.
    before: u32,
}

impl Times {
    /// Entries in run `i` onwards (`i == runs.len()`: none).
    fn count_from(&self, i: usize) -> usize {
        self.runs
            .get(i)
            .map_or(0, |r| self.end.wrapping_sub(r.before) as usize)
    }

    /// The running count at the start of run `i` (the end past the last).
    fn before(&self, i: usize) -> u32 {
        self.runs.get(i).map_or(self.end, |r| r.before)
    }

    fn insert(&mut self, at: DateTime<Utc>) {
        match self.runs.back() {
            Some(last) if last.at == at => {}
            None => {
                // Most targets hold one run inside the horizon: room for
                // one (16 bytes), not the default four.
                self.runs.reserve_exact(1);
                self.runs.push_back(Run {
                    at,
                    before: self.end,
                })
            }
            Some(last) if last.at < at => self.runs.push_back(Run {
                at,
                before: self.end,
            }),
            Some(_) => {
                let i = self.runs.partition_point(|r| r.at < at);
                let next = i + 1;
                if self.runs[i].at != at {
                    let before = self.runs[i].before;
                    self.runs.insert(i, Run { at, before });
                }
                for r in self.runs.range_mut(next..) {
                    r.before = r.before.wrapping_add(1);
                }
            }
        }
        self.end = self.end.wrapping_add(1);
    }

    /// Removes one entry equal to `at`; true if there was one.
    fn remove(&mut self, at: DateTime<Utc>) -> bool {
        let i = self.runs.partition_point(|r| r.at < at);
        if self.runs.get(i).is_none_or(|r| r.at != at) {
            return false;
        }
        let alone = self.before(i + 1).wrapping_sub(self.runs[i].before) == 1;
        for r in self.runs.range_mut(i + 1..) {
            r.before = r.before.wrapping_sub(1);
        }
        if alone {
            self.runs.remove(i);
        }
        self.end = self.end.wrapping_sub(1);
        true
    }

    /// Drops entries before `before`; returns how many.
    fn prune(&mut self, before: DateTime<Utc>) -> usize {
        // Nearly always nothing to drop: one comparison, not a search.
        if self.runs.front().is_none_or(|r| r.at >= before) {
            return 0;
        }
        let n = self.runs.partition_point(|r| r.at < before);
        if n == 0 {
            return 0;
        }
        let dropped = self.before(n).wrapping_sub(self.runs[0].before) as usize;
        self.runs.drain(..n);
        if self.runs.capacity() > 64 && self.runs.len() < self.runs.capacity() / 4 {
            self.runs.shrink_to(self.runs.len() * 2);
        }
        dropped
    }

    /// Entries after `since`, and the oldest of them.
    fn after(&self, since: DateTime<Utc>) -> (usize, Option<DateTime<Utc>>) {
        let i = self.first_after(since);
        (self.count_from(i), self.runs.get(i).map(|r| r.at))
    }

    /// The first run after `since`: the last answer or the next one when
    /// it still fits (O(1)), else a binary search.
    fn first_after(&self, since: DateTime<Utc>) -> usize {
        let len = self.runs.len();
        let fits = |i: usize| {
            i <= len
                && (i == 0 || self.runs[i - 1].at <= since)
                && (i == len || self.runs[i].at > since)
        };
        let h = self.hint.get() as usize;
        let i = if fits(h) {
            h
        } else if fits(h + 1) {
            h + 1
        } else {
            self.runs.partition_point(|r| r.at <= since)
        };
        self.hint.set(u32::try_from(i).unwrap_or(u32::MAX));
        i
    }

    /// The first entry at or after `from` and at or before `to`.
    pub(super) fn first_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let i = self.runs.partition_point(|r| r.at < from);
        self.runs.get(i).map(|r| r.at).filter(|t| *t <= to)
    }

    /// How many entries are at or before `to`.
    pub(super) fn count_until(&self, to: DateTime<Utc>) -> usize {
        self.count_from(0) - self.count_from(self.runs.partition_point(|r| r.at <= to))
    }

    /// The `j`-th entry (0-based, ascending); `j` below the count.
    pub(super) fn nth(&self, j: usize) -> Option<DateTime<Utc>> {
        let base = self.runs.front()?.before;
        // The last run that starts at or before entry j.
        let i = self
            .runs
            .partition_point(|r| (r.before.wrapping_sub(base) as usize) <= j);
        (j < self.count_from(0)).then(|| self.runs[i - 1].at)
    }

    fn last(&self) -> Option<DateTime<Utc>> {
        self.runs.back().map(|r| r.at)
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// One target's executions under one playbook. Nearly every target holds
/// a single time inside the horizon (a run, then its cooldown), so that
/// case is kept inline: 24 bytes in the map and no allocation, against
/// [`Times`]' 40 and a block of its own, for each of the (playbook,
/// target) pairs a permissive policy holds (180,000 in the scale bench).
#[derive(Debug, Clone)]
enum TargetTimes {
    /// `n` entries at `at` (0: empty).
    One { at: DateTime<Utc>, n: u32 },
    /// Entries at two or more times.
    Many(Box<Times>),
}

impl TargetTimes {
    fn new(at: DateTime<Utc>) -> Self {
        TargetTimes::One { at, n: 1 }
    }

    fn insert(&mut self, at: DateTime<Utc>) {
        match self {
            TargetTimes::One { at: a, n } if *a == at || *n == 0 => {
                *a = at;
                *n += 1;
            }
            TargetTimes::One { at: a, n } => {
                let mut t = Times::default();
                for _ in 0..*n {
                    t.insert(*a);
                }
                t.insert(at);
                *self = TargetTimes::Many(Box::new(t));
            }
            TargetTimes::Many(t) => t.insert(at),
        }
    }

    fn remove(&mut self, at: DateTime<Utc>) -> bool {
        match self {
            TargetTimes::One { at: a, n } if *a == at && *n > 0 => {
                *n -= 1;
                true
            }
            TargetTimes::One { .. } => false,
            TargetTimes::Many(t) => t.remove(at),
        }
    }

    fn prune(&mut self, before: DateTime<Utc>) -> usize {
        match self {
            TargetTimes::One { at, n } if *at < before => std::mem::take(n) as usize,
            TargetTimes::One { .. } => 0,
            TargetTimes::Many(t) => t.prune(before),
        }
    }

    fn after(&self, since: DateTime<Utc>) -> (usize, Option<DateTime<Utc>>) {
        match self {
            TargetTimes::One { at, n } if *at > since && *n > 0 => (*n as usize, Some(*at)),
            TargetTimes::One { .. } => (0, None),
            TargetTimes::Many(t) => t.after(since),
        }
    }

    fn last(&self) -> Option<DateTime<Utc>> {
        match self {
            TargetTimes::One { at, n } => (*n > 0).then_some(*at),
            TargetTimes::Many(t) => t.last(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            TargetTimes::One { n, .. } => *n == 0,
            TargetTimes::Many(t) => t.is_empty(),
        }
    }
}

/// One playbook of one policy.
#[derive(Debug, Default, Clone)]
pub(super) struct PlaybookIndex {
    pub(super) executions: Times,
    pub(super) failures: Times,
    pub(super) successes: Times,
    /// By target, the key interned in [`Ledger::keys`].
    targets: HashMap<u32, TargetTimes>,
}

/// Target keys interned ledger-wide: a (playbook, target) entry holds a
/// 4-byte id, not its own copy of the key (about 50 bytes and an
/// allocation), and the same target under many playbooks is one string.
/// Exact (the key itself is the map key): no two targets share an id.
/// Counted: an id is freed, and the key dropped, when the last entry that
/// holds it is, so the table is bounded by the horizon like the rest.
#[derive(Debug, Default, Clone)]
struct Keys {
    ids: HashMap<std::sync::Arc<str>, u32>,
    /// Per id: its key and the entries holding it (None, 0: free).
    slots: Vec<(Option<std::sync::Arc<str>>, u32)>,
    free: Vec<u32>,
}

impl Keys {
    fn get(&self, key: &str) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// The id of `key` with one more reference (interned if new): the
    /// caller stores it in one entry.
    fn hold(&mut self, key: &str) -> u32 {
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let name: std::sync::Arc<str> = key.into();
                let id = match self.free.pop() {
                    Some(id) => id,
                    None => {
                        self.slots.push((None, 0));
                        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.ids.insert(name.clone(), id);
                if let Some(slot) = self.slots.get_mut(id as usize) {
                    *slot = (Some(name), 0);
                }
                id
            }
        };
        if let Some(slot) = self.slots.get_mut(id as usize) {
            slot.1 += 1;
        }
        id
    }

    /// Drops one reference (an entry holding `id` was removed); the key
    /// goes with the last.
    fn release(&mut self, id: u32) {
        let Some(slot) = self.slots.get_mut(id as usize) else {
            return;
        };
        slot.1 = slot.1.saturating_sub(1);
        if slot.1 == 0 {
            if let Some(name) = slot.0.take() {
                self.ids.remove(&name);
                self.free.push(id);
            }
        }
        if self.ids.capacity() > 64 && self.ids.len() < self.ids.capacity() / 4 {
            self.ids.shrink_to(self.ids.len() * 2);
        }
    }

    /// Keys interned (distinct targets held).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// One policy.
#[derive(Debug, Default, Clone)]
struct PolicyIndex {
    executions: Times,
    playbooks: HashMap<String, PlaybookIndex>,
}

/// What has happened, as far as limits care: executions, their outcomes
/// and runs in flight, rebuilt from the state store or the audit log and
/// extended as decisions are made.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    policies: HashMap<String, PolicyIndex>,
    /// Target keys, interned for the (playbook, target) entries.
    keys: Keys,
    /// Entries older than the newest time minus this are dropped.
    horizon: Option<chrono::Duration>,
    /// The policy-wide and per-target executions keep this much, when it is
    /// shorter than `horizon` (see [`Horizon`]).
    narrow: Option<chrono::Duration>,
    /// The newest time recorded.
    newest: Option<DateTime<Utc>>,
    /// Times held (every index counted), and the count after the last full sweep.
    held: usize,
    swept: usize,
    /// Of those, the per-target times, and their count after the last
    /// sweep: stale targets are swept when these double, not only when
    /// everything has (under a narrow target horizon the rest is larger).
    target_held: usize,
    target_swept: usize,
    /// Runs executing now, per policy (the agent keeps this; a CLI run is sequential).
    in_flight: HashMap<String, usize>,
    /// The notification (Alertmanager group delivery) being decided, and
    /// executions per (policy, playbook) within it.
    group: Option<u64>,
    group_counts: HashMap<String, HashMap<String, usize>>,
}

/// How much history a ledger keeps behind its newest entry, by what reads
/// it. The per-(playbook, target) entries are nearly all of a permissive
/// policy's ledger (one per target each playbook acted on), and only
/// cooldowns and target-scope limits read them; the circuit breaker, which
/// often looks furthest back, reads only the per-playbook times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Per-playbook executions and outcomes: playbook-scope rate limits and
    /// the circuit breaker (its half-open trial included); and everything
    /// else, when `targets` is not shorter.
    pub playbooks: chrono::Duration,
    /// Policy-wide and per-target executions: global- and target-scope
    /// rate limits and cooldowns. Never more than `playbooks` is kept.
    pub targets: chrono::Duration,
}

impl Horizon {
    /// One horizon for every part.
    pub fn all(d: chrono::Duration) -> Self {
        Self {
            playbooks: d,
            targets: d,
        }
    }
}

impl Ledger {
    /// An empty ledger that keeps `horizon` of history behind the newest
    /// entry (older entries are dropped as new ones come in).
    pub fn with_horizon(horizon: chrono::Duration) -> Self {
        Self::with_horizons(Horizon::all(horizon))
    }

    /// [`Ledger::with_horizon`], each part keeping its own.
    pub fn with_horizons(h: Horizon) -> Self {
        Self {
            horizon: Some(h.playbooks),
            narrow: Some(h.targets),
            ..Self::default()
        }
    }

    /// Sets how much history is kept behind the newest entry (None: all).
    pub fn set_horizon(&mut self, horizon: Option<chrono::Duration>) {
        self.horizon = horizon;
        self.narrow = None;
        self.swept = 0;
        self.target_swept = 0;
        self.maybe_sweep();
    }

    /// Times held over all indexes (three per execution, one per outcome).
    pub fn held(&self) -> usize {
        self.held
    }

    fn playbook_mut(&mut self, policy: &str, playbook: &str) -> &mut PlaybookIndex {
        entry(&mut entry(&mut self.policies, policy).playbooks, playbook)
    }

    pub(super) fn playbook(&self, policy: &str, playbook: &str) -> Option<&PlaybookIndex> {
        self.policies.get(policy)?.playbooks.get(playbook)
    }

    /// The cut-off before which entries are dropped, if there is a horizon.
    fn cutoff(&self) -> Option<DateTime<Utc>> {
        Some(self.newest? - self.horizon?)
    }

    /// The cut-off for the policy-wide and per-target executions: the
    /// narrower horizon's, never before the wide one's.
    fn narrow_cutoff(&self) -> Option<DateTime<Utc>> {
        let wide = self.cutoff()?;
        Some(match self.narrow {
            Some(n) => wide.max(self.newest? - n),
            None => wide,
        })
    }

    fn saw(&mut self, at: DateTime<Utc>) {
        if self.newest.is_none_or(|n| at > n) {
            self.newest = Some(at);
        }
    }

    /// Drops entries behind the horizon everywhere once the ledger has
    /// doubled since the last sweep (amortised O(1) per entry).
    fn maybe_sweep(&mut self) {
        let (Some(cut), Some(near)) = (self.cutoff(), self.narrow_cutoff()) else {
            return;
        };
        let due = |held: usize, swept: usize| held >= 1024 && held >= swept * 2;
        if !due(self.held, self.swept) && !due(self.target_held, self.target_swept) {
            return;
        }
        let (mut dropped, mut from_targets) = (0, 0);
        let keys = &mut self.keys;
        self.policies.retain(|_, pol| {
            dropped += pol.executions.prune(near);
            pol.playbooks.retain(|_, pb| {
                dropped += pb.executions.prune(cut);
                dropped += pb.failures.prune(cut);
                dropped += pb.successes.prune(cut);
                pb.targets.retain(|id, t| {
                    from_targets += t.prune(near);
                    let keep = !t.is_empty();
                    if !keep {
                        keys.release(*id);
                    }
                    keep
                });
                let keep = !(pb.executions.is_empty()
                    && pb.failures.is_empty()
                    && pb.successes.is_empty());
                if !keep {
                    // Targets hold only times inside the playbook's own.
                    for id in pb.targets.keys() {
                        keys.release(*id);
                    }
                }
                keep
            });
            !(pol.executions.is_empty() && pol.playbooks.is_empty())
        });
        self.held -= dropped + from_targets;
        self.swept = self.held;
        self.target_held -= from_targets;
        self.target_swept = self.target_held;
    }

    /// Records an executed run.
    pub fn record_execution(
        &mut self,
        at: DateTime<Utc>,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) {
        self.saw(at);
        let (cut, near) = (self.cutoff(), self.narrow_cutoff());
        let mut dropped = 0;
        let pol = entry(&mut self.policies, policy);
        pol.executions.insert(at);
        if let Some(c) = near {
            dropped += pol.executions.prune(c);
        }
        let pb = entry(&mut pol.playbooks, playbook);
        pb.executions.insert(at);
        let keys = &mut self.keys;
        let t = match keys
            .get(target_key)
            .filter(|id| pb.targets.contains_key(id))
        {
            Some(id) => pb.targets.entry(id).and_modify(|t| t.insert(at)),
            None => pb.targets.entry(keys.hold(target_key)),
        }
        .or_insert_with(|| TargetTimes::new(at));
        let from_target = near.map_or(0, |c| t.prune(c));
        if let Some(c) = cut {
            dropped += pb.executions.prune(c);
        }
        self.held = self.held + 3 - dropped - from_target;
        self.target_held = self.target_held + 1 - from_target;
        if self.group.is_some() {
            *entry(entry(&mut self.group_counts, policy), playbook) += 1;
        }
        self.maybe_sweep();
    }

    /// Takes back an execution recorded at `at` (one whose records could
    /// not be written, so it did not happen).
    pub fn forget_execution(
        &mut self,
        at: DateTime<Utc>,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) {
        let Some(pol) = self.policies.get_mut(policy) else {
            return;
        };
        let Some(pb) = pol.playbooks.get_mut(playbook) else {
            return;
        };
        let Some(id) = self.keys.get(target_key) else {
            return;
        };
        let Some(t) = pb.targets.get_mut(&id) else {
            return;
        };
        if !t.remove(at) {
            return;
        }
        if t.is_empty() {
            pb.targets.remove(&id);
            self.keys.release(id);
        }
        // The wider indexes may have dropped it already (behind the horizon).
        let removed =
            1 + usize::from(pb.executions.remove(at)) + usize::from(pol.executions.remove(at));
        self.held = self.held.saturating_sub(removed);
        self.target_held = self.target_held.saturating_sub(1);
        if self.group.is_some() {
            if let Some(n) = self
                .group_counts
                .get_mut(policy)
                .and_then(|m| m.get_mut(playbook))
            {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Starts deciding the events of one notification: `maxTargetsPerRun`
    /// counts executions within it.
    pub fn begin_group(&mut self, id: u64) {
        if self.group != Some(id) {
            self.group = Some(id);
            self.group_counts.clear();
        }
    }

    /// Executions of `playbook` decided within the current notification.
    pub fn group_executions(&self, policy: &str, playbook: &str) -> usize {
        self.group_counts
            .get(policy)
            .and_then(|m| m.get(playbook))
            .copied()
            .unwrap_or(0)
    }

    /// A run of `policy` started executing.
    pub fn run_started(&mut self, policy: &str) {
        *self.in_flight.entry(policy.to_string()).or_insert(0) += 1;
    }

    /// A run of `policy` finished (whatever the outcome).
    pub fn run_finished(&mut self, policy: &str) {
        if let Some(n) = self.in_flight.get_mut(policy) {
            *n = n.saturating_sub(1);
        }
    }

    /// Runs of `policy` executing now.
    pub fn in_flight(&self, policy: &str) -> usize {
        self.in_flight.get(policy).copied().unwrap_or(0)
    }

    /// Failed runs of `playbook` since `since`.
    pub fn failures_since(&self, policy: &str, playbook: &str, since: DateTime<Utc>) -> usize {
        self.playbook(policy, playbook)
            .map_or(0, |pb| pb.failures.after(since).0)
    }

    /// Records a failed (or unverified, or interrupted) run.
    pub fn record_failure(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.record_outcome(at, policy, playbook, false);
    }

    /// Records a verified run.
    pub fn record_success(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str) {
        self.record_outcome(at, policy, playbook, true);
    }

    fn record_outcome(&mut self, at: DateTime<Utc>, policy: &str, playbook: &str, ok: bool) {
        self.saw(at);
        let cut = self.cutoff();
        let pb = self.playbook_mut(policy, playbook);
        let times = if ok {
            &mut pb.successes
        } else {
            &mut pb.failures
        };
        times.insert(at);
        let dropped = cut.map_or(0, |c| times.prune(c));
        self.held = self.held + 1 - dropped;
        self.maybe_sweep();
    }

    /// When `playbook` last executed on the target.
    pub fn last_execution(
        &self,
        policy: &str,
        playbook: &str,
        target_key: &str,
    ) -> Option<DateTime<Utc>> {
        self.playbook(policy, playbook)?
            .targets
            .get(&self.keys.get(target_key)?)?
            .last()
    }

    /// Executions counted for a rate-limit scope since `since`, and the oldest of them.
    pub fn executions_since(
        &self,
        policy: &str,
        scope: RateScope,
        playbook: &str,
        target_key: &str,
        since: DateTime<Utc>,
    ) -> (usize, Option<DateTime<Utc>>) {
        let Some(pol) = self.policies.get(policy) else {
            return (0, None);
        };
        let found = match scope {
            RateScope::Global => Some(pol.executions.after(since)),
            RateScope::Playbook => pol
                .playbooks
                .get(playbook)
                .map(|pb| pb.executions.after(since)),
            RateScope::Target => pol
                .playbooks
                .get(playbook)
                .and_then(|pb| pb.targets.get(&self.keys.get(target_key)?))
                .map(|t| t.after(since)),
        };
        found.unwrap_or((0, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BreakerState;

    /// The ledger as it was before the index: every query walks every entry.
    #[derive(Default)]
    struct Naive {
        executions: Vec<(DateTime<Utc>, String, String, String)>,
        failures: Vec<(DateTime<Utc>, String, String)>,
        successes: Vec<(DateTime<Utc>, String, String)>,
    }

    impl Naive {
        fn forget(&mut self, at: DateTime<Utc>, pol: &str, pb: &str, tk: &str) {
            if let Some(i) = self
                .executions
                .iter()
                .rposition(|(t, p, b, k)| *t == at && p == pol && b == pb && k == tk)
            {
                self.executions.remove(i);
            }
        }
        fn since(
            &self,
            pol: &str,
            scope: RateScope,
            pb: &str,
            tk: &str,
            since: DateTime<Utc>,
        ) -> (usize, Option<DateTime<Utc>>) {
            let mut n = 0;
            let mut oldest: Option<DateTime<Utc>> = None;
            for (at, p, b, k) in &self.executions {
                let hit = *at > since
                    && p == pol
                    && match scope {
                        RateScope::Global => true,
                        RateScope::Playbook => b == pb,
                        RateScope::Target => b == pb && k == tk,
                    };
                if hit {
                    n += 1;
                    oldest = Some(oldest.map_or(*at, |o| o.min(*at)));
                }
            }
            (n, oldest)
        }
        fn last(&self, pol: &str, pb: &str, tk: &str) -> Option<DateTime<Utc>> {
            self.executions
                .iter()
                .filter(|(_, p, b, k)| p == pol && b == pb && k == tk)
                .map(|(t, ..)| *t)
                .max()
        }
        fn failures_since(&self, pol: &str, pb: &str, since: DateTime<Utc>) -> usize {
            self.failures
                .iter()
                .filter(|(at, p, b)| *at > since && p == pol && b == pb)
                .count()
        }
        fn breaker(
            &self,
            policy: &str,
            playbook: &str,
            failures: u32,
            within: chrono::Duration,
            open_for: chrono::Duration,
            now: DateTime<Utc>,
        ) -> BreakerState {
            let mine = |v: &[(DateTime<Utc>, String, String)]| -> Vec<DateTime<Utc>> {
                let mut t: Vec<DateTime<Utc>> = v
                    .iter()
                    .filter(|(at, pol, pb)| pol == policy && pb == playbook && *at <= now)
                    .map(|(at, ..)| *at)
                    .collect();
                t.sort_unstable();
                t
            };
            let fails = mine(&self.failures);
            let k = failures as usize;
            if k == 0 || fails.len() < k {
                return BreakerState::Closed;
            }
            let Some(mut opened) = fails
                .windows(k)
                .filter(|w| w[k - 1] - w[0] <= within)
                .map(|w| w[k - 1])
                .max()
            else {
                return BreakerState::Closed;
            };
            let oks = mine(&self.successes);
            let mut reopened = false;
            loop {
                let half_open = opened + open_for;
                if now < half_open {
                    return BreakerState::Open { opened, reopened };
                }
                let trial = self
                    .executions
                    .iter()
                    .filter(|(at, pol, pb, _)| {
                        pol == policy && pb == playbook && *at >= half_open && *at <= now
                    })
                    .map(|(at, ..)| *at)
                    .min();
                let Some(started) = trial else {
                    return BreakerState::Closed;
                };
                let failed = fails.iter().find(|t| **t >= started).copied();
                let verified = oks.iter().find(|t| **t >= started).copied();
                match (failed, verified) {
                    (Some(f), Some(v)) if v < f => return BreakerState::Closed,
                    (None, Some(_)) => return BreakerState::Closed,
                    (Some(f), _) => {
                        opened = f;
                        reopened = true;
                    }
                    (None, None) => return BreakerState::HalfOpenTrial { started },
                }
            }
        }
    }

    const POLICIES: [&str; 2] = ["p", "q"];
    const PLAYBOOKS: [&str; 3] = ["a", "b", "c"];
    const TARGETS: [&str; 4] = ["t0", "t1", "t2", "t3"];
    const SCOPES: [RateScope; 3] = [RateScope::Global, RateScope::Playbook, RateScope::Target];

    fn pick<T: Copy>(rng: &mut fastrand::Rng, v: &[T]) -> T {
        v[rng.usize(..v.len())]
    }

    /// Random records (mostly in time order, some out of order as `--at`
    /// what-ifs are), forgets of recorded and unknown executions, and after
    /// each step every query compared with the naive walk.
    #[test]
    fn the_index_answers_as_a_walk_over_every_entry() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let min = chrono::Duration::minutes;
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut l, mut n) = (Ledger::default(), Naive::default());
            let mut clock = t0;
            let mut recorded = Vec::new();
            for _ in 0..300 {
                clock += min(rng.i64(0..4));
                let at = if rng.u8(..10) == 0 {
                    clock - min(rng.i64(0..120))
                } else {
                    clock
                };
                let (pol, pb, tk) = (
                    pick(&mut rng, &POLICIES),
                    pick(&mut rng, &PLAYBOOKS),
                    pick(&mut rng, &TARGETS),
                );
                match rng.u8(..10) {
                    0..=4 => {
                        l.record_execution(at, pol, pb, tk);
                        n.executions.push((at, pol.into(), pb.into(), tk.into()));
                        recorded.push((at, pol, pb, tk));
                    }
                    5 => {
                        l.record_failure(at, pol, pb);
                        n.failures.push((at, pol.into(), pb.into()));
                    }
                    6 => {
                        l.record_success(at, pol, pb);
                        n.successes.push((at, pol.into(), pb.into()));
                    }
                    7 if !recorded.is_empty() => {
                        let (at, pol, pb, tk) = recorded.swap_remove(rng.usize(..recorded.len()));
                        l.forget_execution(at, pol, pb, tk);
                        n.forget(at, pol, pb, tk);
                    }
                    _ => {
                        // Not recorded: a no-op for both.
                        l.forget_execution(at + min(1000), pol, pb, tk);
                        n.forget(at + min(1000), pol, pb, tk);
                    }
                }
                let now = clock + min(rng.i64(-30..30));
                let since = now - min(rng.i64(0..180));
                for pol in POLICIES {
                    for pb in PLAYBOOKS {
                        assert_eq!(
                            l.failures_since(pol, pb, since),
                            n.failures_since(pol, pb, since)
                        );
                        let (k, within, open_for) =
                            (rng.u32(0..4), min(rng.i64(1..60)), min(rng.i64(1..60)));
                        assert_eq!(
                            l.breaker_state(pol, pb, k, within, open_for, now),
                            n.breaker(pol, pb, k, within, open_for, now),
                            "seed {seed}: breaker {pol}/{pb} k={k}"
                        );
                        for tk in TARGETS {
                            assert_eq!(l.last_execution(pol, pb, tk), n.last(pol, pb, tk));
                            for scope in SCOPES {
                                assert_eq!(
                                    l.executions_since(pol, scope, pb, tk, since),
                                    n.since(pol, scope, pb, tk, since),
                                    "seed {seed}: {pol}/{pb}/{tk} {scope:?} since {since}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A target's entry stays small: the map holds one per (playbook,
    /// target) inside the horizon.
    #[test]
    fn a_target_entry_is_inline_and_small() {
        assert!(std::mem::size_of::<TargetTimes>() <= 24);
        let t0 = Utc::now();
        let s = chrono::Duration::seconds;
        let mut t = TargetTimes::new(t0);
        t.insert(t0);
        assert!(matches!(t, TargetTimes::One { n: 2, .. }));
        assert_eq!(t.after(t0 - s(1)), (2, Some(t0)));
        assert_eq!(t.after(t0), (0, None));
        t.insert(t0 + s(5));
        assert!(matches!(t, TargetTimes::Many(_)));
        assert_eq!(t.after(t0 - s(1)), (3, Some(t0)));
        assert_eq!(t.last(), Some(t0 + s(5)));
        assert_eq!(t.prune(t0 + s(1)), 2);
        assert_eq!(t.after(t0), (1, Some(t0 + s(5))));
        assert!(t.remove(t0 + s(5)));
        assert!(t.is_empty());
        let mut one = TargetTimes::new(t0);
        assert!(!one.remove(t0 + s(1)));
        assert_eq!(one.prune(t0 + s(1)), 1);
        assert!(one.is_empty() && one.last().is_none());
        // Emptied, it takes the next time as its one.
        one.insert(t0 + s(9));
        assert_eq!(one.after(t0), (1, Some(t0 + s(9))));
    }

    /// Target keys are interned: one string per distinct target however
    /// many playbooks hold it, freed with the last entry that holds it
    /// (behind the horizon, or forgotten), so a stream of ever new targets
    /// keeps the table at the horizon's worth; and an id freed and reused
    /// for another target never carries the old one's times.
    #[test]
    fn interned_target_keys_are_exact_and_freed_with_their_entries() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sec = chrono::Duration::seconds;
        let horizon = chrono::Duration::minutes(10);
        let (mut l, mut n) = (Ledger::with_horizon(horizon), Naive::default());
        let mut max_keys = 0;
        for i in 0..20_000i64 {
            let at = t0 + sec(i);
            // A new target every second, under two playbooks (one key).
            let tk = format!("kind=kubernetes.pod|name=p-{i}|namespace=etl");
            for pb in ["a", "b"] {
                l.record_execution(at, "p", pb, &tk);
                n.executions.push((at, "p".into(), pb.into(), tk.clone()));
            }
            if i % 5 == 0 {
                l.forget_execution(at, "p", "b", &tk);
                n.forget(at, "p", "b", &tk);
            }
            max_keys = max_keys.max(l.keys.len());
            if i % 501 == 0 {
                let since = at - sec(300);
                for back in [0, 1, 2, 5, 299, 601, 5000] {
                    let old = format!("kind=kubernetes.pod|name=p-{}|namespace=etl", i - back);
                    for pb in ["a", "b"] {
                        let recent = |t: Option<DateTime<Utc>>| t.filter(|t| at - *t < horizon);
                        assert_eq!(
                            recent(l.last_execution("p", pb, &old)),
                            recent(n.last("p", pb, &old)),
                            "{pb} {old} at {i}"
                        );
                        assert_eq!(
                            l.executions_since("p", RateScope::Target, pb, &old, since),
                            n.since("p", RateScope::Target, pb, &old, since),
                            "{pb} {old} at {i}"
                        );
                    }
                }
            }
        }
        // 600 targets inside the horizon; stale ones wait for the next
        // sweep (when the times held have doubled): a few horizons' worth,
        // not the 20,000 of the whole history.
        assert!(max_keys <= 5 * 600, "{max_keys} keys interned");
        assert!(max_keys >= 600, "{max_keys} keys interned");
        // Forgetting the last entry of a target frees its key.
        let mut l = Ledger::default();
        l.record_execution(t0, "p", "a", "k1");
        l.record_execution(t0, "p", "b", "k1");
        assert_eq!(l.keys.len(), 1);
        l.forget_execution(t0, "p", "a", "k1");
        assert_eq!(l.keys.len(), 1);
        l.forget_execution(t0, "p", "b", "k1");
        assert_eq!(l.keys.len(), 0);
        // The freed id, reused for k2, does not answer for k1 or carry its times.
        l.record_execution(t0 + sec(1), "p", "a", "k2");
        assert_eq!(l.last_execution("p", "a", "k1"), None);
        assert_eq!(l.last_execution("p", "a", "k2"), Some(t0 + sec(1)));
        assert_eq!(
            l.executions_since("p", RateScope::Target, "a", "k2", t0 - sec(1)),
            (1, Some(t0 + sec(1)))
        );
    }

    /// With a horizon, any window that fits inside it sees what the naive
    /// walk over all history sees, while the ledger holds only about the
    /// horizon's worth of entries, however long the history.
    #[test]
    fn a_horizon_bounds_the_ledger_and_keeps_every_window_inside_it() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sec = chrono::Duration::seconds;
        let horizon = chrono::Duration::hours(1);
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut l, mut n) = (Ledger::with_horizon(horizon), Naive::default());
        let mut recorded = std::collections::VecDeque::new();
        let mut max_held = 0;
        for i in 0..50_000i64 {
            // One execution a second: 3,600 inside the horizon at any time.
            let at = t0 + sec(i);
            let (pol, pb, tk) = (
                pick(&mut rng, &POLICIES),
                pick(&mut rng, &PLAYBOOKS),
                pick(&mut rng, &TARGETS),
            );
            l.record_execution(at, pol, pb, tk);
            n.executions.push((at, pol.into(), pb.into(), tk.into()));
            recorded.push_back((at, pol, pb, tk));
            if i % 7 == 0 {
                l.record_failure(at, pol, pb);
                n.failures.push((at, pol.into(), pb.into()));
            }
            // Take back a recent one now and then (a refused planned run).
            if i % 13 == 0 {
                if let Some((at, pol, pb, tk)) = recorded.pop_back() {
                    l.forget_execution(at, pol, pb, tk);
                    n.forget(at, pol, pb, tk);
                }
            }
            max_held = max_held.max(l.held());
            if i % 997 == 0 {
                let now = at;
                for pol in POLICIES {
                    for pb in PLAYBOOKS {
                        let since = now - sec(rng.i64(0..3600));
                        assert_eq!(
                            l.failures_since(pol, pb, since),
                            n.failures_since(pol, pb, since)
                        );
                        for tk in TARGETS {
                            // A cooldown inside the horizon decides the same.
                            let recent =
                                |t: Option<DateTime<Utc>>| t.filter(|t| now - *t < horizon);
                            assert_eq!(
                                recent(l.last_execution(pol, pb, tk)),
                                recent(n.last(pol, pb, tk))
                            );
                            for scope in SCOPES {
                                assert_eq!(
                                    l.executions_since(pol, scope, pb, tk, since),
                                    n.since(pol, scope, pb, tk, since),
                                    "{pol}/{pb}/{tk} {scope:?} at {i}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // 3 times per execution and 1 per failure inside the horizon, at
        // most doubled between sweeps: not the 50,000 of the whole history.
        let live = 3 * 3600 + 3600 / 7 + 1;
        assert!(
            max_held <= 2 * live + 64,
            "held {max_held} times, the horizon holds {live}"
        );
    }

    /// Two horizons: the per-target and policy-wide executions keep the
    /// narrow one, the per-playbook times the wide one. Every window that
    /// fits inside its part's horizon sees what the naive walk sees (the
    /// breaker's per-playbook times as far back as the wide one), and the
    /// per-target entries held are the narrow horizon's worth.
    #[test]
    fn a_narrow_target_horizon_keeps_every_window_inside_it_and_holds_less() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sec = chrono::Duration::seconds;
        let (wide, narrow) = (chrono::Duration::hours(3), chrono::Duration::minutes(30));
        let mut rng = fastrand::Rng::with_seed(11);
        let mut l = Ledger::with_horizons(Horizon {
            playbooks: wide,
            targets: narrow,
        });
        let mut n = Naive::default();
        let mut max_targets = 0;
        for i in 0..40_000i64 {
            let at = t0 + sec(i);
            let pol = pick(&mut rng, &POLICIES);
            let pb = pick(&mut rng, &PLAYBOOKS);
            // Ever new targets: what the per-target entries cost is the horizon's.
            let tk = format!("t{}", i % 5000);
            l.record_execution(at, pol, pb, &tk);
            n.executions.push((at, pol.into(), pb.into(), tk.clone()));
            if i % 5 == 0 {
                l.record_failure(at, pol, pb);
                n.failures.push((at, pol.into(), pb.into()));
            }
            max_targets = max_targets.max(l.keys.len());
            if i % 1999 == 0 {
                let now = at;
                for pol in POLICIES {
                    for pb in PLAYBOOKS {
                        let far = now - sec(rng.i64(0..wide.num_seconds()));
                        assert_eq!(
                            l.failures_since(pol, pb, far),
                            n.failures_since(pol, pb, far)
                        );
                        assert_eq!(
                            l.executions_since(pol, RateScope::Playbook, pb, "", far),
                            n.since(pol, RateScope::Playbook, pb, "", far),
                        );
                        let near = now - sec(rng.i64(0..narrow.num_seconds()));
                        assert_eq!(
                            l.executions_since(pol, RateScope::Global, pb, "", near),
                            n.since(pol, RateScope::Global, pb, "", near),
                        );
                        for k in (i - 40).max(0)..=i {
                            let tk = format!("t{}", k % 5000);
                            let recent = |t: Option<DateTime<Utc>>| t.filter(|t| now - *t < narrow);
                            assert_eq!(
                                recent(l.last_execution(pol, pb, &tk)),
                                recent(n.last(pol, pb, &tk))
                            );
                            assert_eq!(
                                l.executions_since(pol, RateScope::Target, pb, &tk, near),
                                n.since(pol, RateScope::Target, pb, &tk, near),
                                "{pol}/{pb}/{tk} at {i}"
                            );
                        }
                    }
                }
            }
        }
        // 1,800 targets inside the narrow horizon, at most doubled between
        // sweeps; the wide one would hold all 5,000.
        assert!(max_targets <= 2 * 1800 + 64, "held {max_targets} targets");
    }
}
