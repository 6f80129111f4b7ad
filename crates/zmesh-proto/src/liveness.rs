//! Provides the liveness rule of one heartbeated peer or channel: when the next heartbeat
//! is due and when silence means the other side is lost. Pure: every call takes `now`.
//!
//! Two shapes share the rule. A call's channel (node, client, device) follows zerorpc: a
//! heartbeat every period, the first one period after the call opened, and the other side
//! lost after [`CHANNEL_LIVENESS`] silent periods, with one period of grace before its
//! first heartbeat is expected. A worker-device link follows the Paranoid Pirate pattern:
//! lost after a given number of silent periods counted from when the link came up, no
//! grace.

use std::time::{Duration, Instant};

/// Silent periods after which the other side of a call's channel is lost (zerorpc's).
pub const CHANNEL_LIVENESS: u32 = 2;

/// When heartbeats go out: one every period, the first one period after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    last_sent: Instant,
}

impl Pacer {
    /// A pacer whose first heartbeat is due one period after `now`.
    pub fn new(now: Instant) -> Self {
        Self { last_sent: now }
    }

    /// Whether a heartbeat is due at `now` (a full `period` since the last one); if so it
    /// counts as sent, so the next is due a period later.
    pub fn due(&mut self, now: Instant, period: Duration) -> bool {
        let due = now.saturating_duration_since(self.last_sent) >= period;
        if due {
            self.last_sent = now;
        }
        due
    }
}

/// What [`Liveness::poll`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The other side has been silent too long.
    Lost,
    /// Alive, and a heartbeat is due now (counted as sent).
    Heartbeat,
    /// Alive, nothing to send.
    Quiet,
}

/// The liveness of one channel or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    period: Duration,
    /// Silent periods after which the other side is lost.
    lost_after: u32,
    /// When the other side was last heard from (or when the channel opened).
    since: Instant,
    pacer: Pacer,
    /// Whether one period of silence is forgiven on top of the limit: on a channel until
    /// the other side is first heard from, never on a link.
    grace: bool,
    /// Whether the other side was ever heard from: a channel whose server never said a
    /// word (not even a heartbeat) was ignored rather than lost.
    heard_once: bool,
}

impl Liveness {
    /// A call's channel opened at `now`, heartbeated every `period` (zerorpc's timing: see
    /// the module doc).
    pub fn channel(period: Duration, now: Instant) -> Self {
        Self {
            period,
            lost_after: CHANNEL_LIVENESS,
            since: now,
            pacer: Pacer::new(now),
            grace: true,
            heard_once: false,
        }
    }

    /// A link that came up at `now`, heartbeated every `period` and lost after
    /// `lost_after` silent periods from then on.
    pub fn link(period: Duration, lost_after: u32, now: Instant) -> Self {
        Self {
            period,
            lost_after,
            since: now,
            pacer: Pacer::new(now),
            grace: false,
            heard_once: false,
        }
    }

    /// The heartbeat period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long the other side may stay silent (after any grace) before it is lost.
    pub fn silence_limit(&self) -> Duration {
        self.period.saturating_mul(self.lost_after)
    }

    /// The other side was heard from at `now` (a heartbeat or any other event).
    pub fn heard(&mut self, now: Instant) {
        self.since = now;
        self.grace = false;
        self.heard_once = true;
    }

    /// Whether the other side was ever heard from since the channel or link began.
    pub fn was_heard(&self) -> bool {
        self.heard_once
    }

    /// Whether the other side has been silent for longer than the limit at `now`.
    pub fn is_lost(&self, now: Instant) -> bool {
        let grace = if self.grace {
            self.period
        } else {
            Duration::ZERO
        };
        now.saturating_duration_since(self.since)
            .saturating_sub(grace)
            > self.silence_limit()
    }

    /// Whether a heartbeat is due at `now`; if so it counts as sent.
    pub fn heartbeat_due(&mut self, now: Instant) -> bool {
        self.pacer.due(now, self.period)
    }

    /// One timer pass: lost, or else whether a heartbeat is due (counted as sent).
    pub fn poll(&mut self, now: Instant) -> Verdict {
        if self.is_lost(now) {
            Verdict::Lost
        } else if self.heartbeat_due(now) {
            Verdict::Heartbeat
        } else {
            Verdict::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A channel remembers whether its other side ever spoke, so a lost channel can tell
    /// "ignored from the start" from "went silent mid-call".
    #[test]
    fn a_channel_knows_whether_it_was_ever_heard() {
        let t0 = Instant::now();
        let mut silent = Liveness::channel(P, t0);
        assert!(!silent.was_heard());
        assert_eq!(silent.poll(t0 + P * 4), Verdict::Lost);
        assert!(!silent.was_heard(), "lost without a word");
        let mut spoke = Liveness::channel(P, t0);
        spoke.heard(t0 + P);
        assert_eq!(spoke.poll(t0 + P * 4), Verdict::Lost);
        assert!(spoke.was_heard(), "heard once, then silent");
        assert!(!Liveness::link(P, 3, t0).was_heard());
    }

    #[test]
    fn pacer_is_due_every_full_period_from_the_last_send() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        assert!(!pacer.due(t0, P));
        assert!(!pacer.due(t0 + P - ms(1), P));
        assert!(pacer.due(t0 + P, P), "due at exactly one period");
        assert!(!pacer.due(t0 + P, P), "counted as sent");
        // A late pass resets the schedule to when it really went out.
        assert!(pacer.due(t0 + P * 3, P));
        assert!(!pacer.due(t0 + P * 4 - ms(1), P));
        assert!(pacer.due(t0 + P * 4, P));
    }

    #[test]
    fn pacer_takes_the_period_of_each_pass() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        assert!(!pacer.due(t0 + ms(10), ms(20)));
        assert!(pacer.due(t0 + ms(10), ms(10)));
    }

    #[test]
    fn channel_never_heard_has_one_period_of_grace() {
        let t0 = Instant::now();
        let live = Liveness::channel(P, t0);
        assert_eq!(live.silence_limit(), P * 2);
        // Lost only after opened + period + 2 * period.
        assert!(!live.is_lost(t0));
        assert!(!live.is_lost(t0 + P * 3));
        assert!(live.is_lost(t0 + P * 3 + ms(1)));
    }

    #[test]
    fn channel_heard_is_lost_after_two_silent_periods() {
        let t0 = Instant::now();
        let mut live = Liveness::channel(P, t0);
        live.heard(t0 + ms(100));
        assert!(!live.is_lost(t0 + ms(100) + P * 2));
        assert!(live.is_lost(t0 + ms(100) + P * 2 + ms(1)));
        // Heard again: the silence counts from then.
        live.heard(t0 + P * 2);
        assert!(!live.is_lost(t0 + P * 4));
        assert!(live.is_lost(t0 + P * 4 + ms(1)));
    }

    #[test]
    fn being_heard_early_ends_the_grace() {
        // Heard at once, the grace is gone: lost after two periods, not three.
        let t0 = Instant::now();
        let mut live = Liveness::channel(P, t0);
        live.heard(t0);
        assert!(live.is_lost(t0 + P * 2 + ms(1)));
    }

    #[test]
    fn time_before_the_start_is_not_silence() {
        let t0 = Instant::now() + P * 10;
        let live = Liveness::link(P, 3, t0);
        assert!(!live.is_lost(t0 - P * 5));
        let mut paced = live;
        assert_eq!(paced.poll(t0 - P * 5), Verdict::Quiet);
    }

    #[test]
    fn link_has_no_grace() {
        let t0 = Instant::now();
        let mut live = Liveness::link(P, 3, t0);
        assert_eq!(live.silence_limit(), P * 3);
        assert_eq!(live.period(), P);
        assert!(
            !live.is_lost(t0 + P * 3),
            "three periods exactly: still alive"
        );
        assert!(live.is_lost(t0 + P * 3 + ms(1)));
        live.heard(t0 + P * 3);
        assert!(!live.is_lost(t0 + P * 6));
        assert!(live.is_lost(t0 + P * 6 + ms(1)));
    }

    #[test]
    fn poll_heartbeats_every_period_and_reports_the_loss() {
        let t0 = Instant::now();
        let mut live = Liveness::channel(P, t0);
        assert_eq!(live.poll(t0 + ms(1)), Verdict::Quiet);
        assert_eq!(live.poll(t0 + P - ms(1)), Verdict::Quiet);
        assert_eq!(live.poll(t0 + P), Verdict::Heartbeat, "first one period in");
        assert_eq!(live.poll(t0 + P + ms(1)), Verdict::Quiet);
        assert_eq!(live.poll(t0 + P * 2), Verdict::Heartbeat);
        assert_eq!(live.poll(t0 + P * 3), Verdict::Heartbeat);
        assert_eq!(live.poll(t0 + P * 3 + ms(1)), Verdict::Lost);
        assert_eq!(
            live.poll(t0 + P * 3 + ms(2)),
            Verdict::Lost,
            "lost stays lost"
        );
    }

    #[test]
    fn loss_is_decided_before_a_heartbeat() {
        let t0 = Instant::now();
        let mut live = Liveness::link(P, 1, t0);
        assert_eq!(live.poll(t0 + P * 2), Verdict::Lost);
        // The lost pass sent nothing, so a heartbeat is still due.
        assert!(live.heartbeat_due(t0 + P * 2));
    }

    #[test]
    fn hearing_does_not_move_the_heartbeat_schedule() {
        let t0 = Instant::now();
        let mut live = Liveness::channel(P, t0);
        live.heard(t0 + P - ms(1));
        assert_eq!(live.poll(t0 + P), Verdict::Heartbeat);
    }

    #[test]
    fn stays_as_small_as_the_fields_it_replaces() {
        // One per open call on node, client and device: three instants and a flag before.
        assert!(std::mem::size_of::<Liveness>() <= 64);
    }

    #[test]
    fn huge_periods_do_not_overflow() {
        let t0 = Instant::now();
        let mut live = Liveness::channel(Duration::MAX, t0);
        assert_eq!(live.silence_limit(), Duration::MAX);
        assert_eq!(live.poll(t0 + P * 1000), Verdict::Quiet);
    }
}
