//! The alternating blocks scheduler: the modes under comparison take turns block by block
//! (raw, tcp, ipc, raw, tcp, ...) until each has made its calls or used its time. Run one
//! after the other, a mode measured while the machine was busier or its CPUs slower carried
//! that into the ratios (runs of the same binary gave 1.00x-1.32x for tcp/raw p50 that
//! way); taking turns spreads such a change over every mode.
//!
//! Pure: the caller measures each [`Turn`] and reports what it did with
//! [`Schedule::finish`]; nothing here reads a clock.

use std::time::Duration;

/// In which order the modes take their turns within a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The same order every pass (mode 0, 1, 2, 0, 1, 2, ...).
    Fixed,
    /// Pass `n` starts with mode `n mod modes` (0, 1, then 1, 0 for two modes), so no mode
    /// always runs right after another's turn.
    Rotate,
}

/// One turn: measure `calls` calls of `mode`, stopping early after `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Index of the mode (as given to [`Schedule::new`]).
    pub mode: usize,
    /// The pass this turn belongs to, from 0.
    pub pass: u64,
    /// Calls to make at most.
    pub calls: u64,
    /// Longest the turn may take (what is left of the mode's time).
    pub time: Duration,
}

/// What one mode did so far.
#[derive(Debug, Clone, Copy, Default)]
struct Done {
    calls: u64,
    measured: Duration,
}

/// Turns of every mode, [`Schedule::new`]'s `count` calls each split into `rounds` blocks.
#[derive(Debug, Clone)]
pub struct Schedule {
    done: Vec<Done>,
    count: u64,
    per_block: u64,
    time: Duration,
    order: Order,
    pass: u64,
    /// Position within the current pass.
    position: usize,
}

impl Schedule {
    /// `modes` modes of `count` calls each, in blocks of `count / rounds` (rounded up, at
    /// least 1) calls, a mode also stopping once its turns took `time` in all.
    pub fn new(modes: usize, count: u64, rounds: u64, time: Duration, order: Order) -> Self {
        Self {
            done: vec![Done::default(); modes],
            count,
            per_block: count.div_ceil(rounds.max(1)).max(1),
            time,
            order,
            pass: 0,
            position: 0,
        }
    }

    /// The next turn, or `None` once every mode has made its calls or used its time.
    pub fn next_turn(&mut self) -> Option<Turn> {
        let modes = self.done.len();
        if (0..modes).all(|mode| self.finished(mode)) {
            return None;
        }
        loop {
            if self.position == modes {
                self.position = 0;
                self.pass += 1;
            }
            let mode = match self.order {
                Order::Fixed => self.position,
                Order::Rotate => (self.position + (self.pass % modes as u64) as usize) % modes,
            };
            self.position += 1;
            if self.finished(mode) {
                continue;
            }
            let done = self.done[mode];
            return Some(Turn {
                mode,
                pass: self.pass,
                calls: self.per_block.min(self.count - done.calls),
                time: self.time.saturating_sub(done.measured),
            });
        }
    }

    /// Records what `turn` did: `calls` calls in `elapsed`.
    pub fn finish(&mut self, turn: &Turn, calls: u64, elapsed: Duration) {
        let done = &mut self.done[turn.mode];
        done.calls += calls;
        done.measured += elapsed;
    }

    /// Calls `mode` made so far.
    pub fn calls(&self, mode: usize) -> u64 {
        self.done[mode].calls
    }

    /// Sum of `mode`'s turns' times so far.
    pub fn measured(&self, mode: usize) -> Duration {
        self.done[mode].measured
    }

    fn finished(&self, mode: usize) -> bool {
        let done = self.done[mode];
        done.calls >= self.count || done.measured >= self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs `schedule` to the end, every turn making all its calls in `took(turn)`.
    fn run(mut schedule: Schedule, took: impl Fn(&Turn) -> Duration) -> Vec<Turn> {
        let mut turns = Vec::new();
        while let Some(turn) = schedule.next_turn() {
            schedule.finish(&turn, turn.calls, took(&turn));
            turns.push(turn);
        }
        turns
    }

    #[test]
    fn modes_take_turns_block_by_block_and_the_last_block_is_short() {
        let turns = run(
            Schedule::new(3, 305, 10, Duration::from_secs(15), Order::Fixed),
            |_| MS,
        );
        assert_eq!(turns.len(), 30);
        let modes: Vec<usize> = turns.iter().map(|t| t.mode).take(6).collect();
        assert_eq!(modes, [0, 1, 2, 0, 1, 2]);
        assert!(turns[..27].iter().all(|t| t.calls == 31));
        assert!(turns[27..].iter().all(|t| t.calls == 26 && t.pass == 9));
        for mode in 0..3 {
            let calls: u64 = turns
                .iter()
                .filter(|t| t.mode == mode)
                .map(|t| t.calls)
                .sum();
            assert_eq!(calls, 305);
        }
    }

    #[test]
    fn rotating_order_alternates_which_of_two_goes_first() {
        let turns = run(
            Schedule::new(2, 30, 3, Duration::MAX, Order::Rotate),
            |_| MS,
        );
        let modes: Vec<usize> = turns.iter().map(|t| t.mode).collect();
        assert_eq!(modes, [0, 1, 1, 0, 0, 1]);
        assert!(turns.iter().all(|t| t.calls == 10));
    }

    #[test]
    fn a_mode_out_of_time_stops_while_the_others_go_on() {
        // Mode 1 uses 40 ms per turn of a 100 ms budget: three turns (the third starts
        // with 20 ms left and is told so), then it is done.
        let mut schedule = Schedule::new(2, 100, 10, 100 * MS, Order::Fixed);
        let mut turns = Vec::new();
        while let Some(turn) = schedule.next_turn() {
            let elapsed = if turn.mode == 1 { 40 * MS } else { MS };
            schedule.finish(&turn, turn.calls, elapsed);
            turns.push(turn);
        }
        let slow: Vec<&Turn> = turns.iter().filter(|t| t.mode == 1).collect();
        assert_eq!(slow.len(), 3);
        assert_eq!(slow[2].time, 20 * MS);
        assert_eq!(schedule.calls(1), 30);
        assert_eq!(schedule.measured(1), 120 * MS);
        assert_eq!(schedule.calls(0), 100);
        assert_eq!(turns.iter().filter(|t| t.mode == 0).count(), 10);
    }

    #[test]
    fn a_turn_that_made_fewer_calls_is_continued_next_pass() {
        let mut schedule = Schedule::new(1, 10, 2, Duration::MAX, Order::Fixed);
        let first = schedule.next_turn().expect("a turn");
        assert_eq!(first.calls, 5);
        schedule.finish(&first, 2, MS);
        let second = schedule.next_turn().expect("a turn");
        assert_eq!((second.pass, second.calls), (1, 5));
        schedule.finish(&second, 5, MS);
        let third = schedule.next_turn().expect("a turn");
        assert_eq!(third.calls, 3, "what is left of the count");
        schedule.finish(&third, 3, MS);
        assert_eq!(schedule.next_turn(), None);
    }

    #[test]
    fn no_calls_or_no_modes_means_no_turns() {
        assert_eq!(
            Schedule::new(3, 0, 10, Duration::MAX, Order::Fixed).next_turn(),
            None
        );
        assert_eq!(
            Schedule::new(0, 10, 10, Duration::MAX, Order::Rotate).next_turn(),
            None
        );
    }
}
