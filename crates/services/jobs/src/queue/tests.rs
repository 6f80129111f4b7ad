//! Unit tests of the queue's rules, on a clock the tests move by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

fn limits() -> QueueLimits {
    QueueLimits {
        max_jobs: 100,
        max_bytes: 10_000,
        concurrency: 4,
        result_ttl: Duration::from_secs(60),
        keep_errors: 3,
    }
}

fn submit(q: &mut Queue, now: SystemTime, method: &str, options: JobOptions) -> JobId {
    q.submit(now, method.to_owned(), vec![0x90], options)
        .expect("submit")
        .0
}

/// Options for `max_attempts` attempts with backoff from `base_ms` up to `cap_ms`.
fn retried(max_attempts: u32, base_ms: u64, cap_ms: u64) -> JobOptions {
    JobOptions {
        max_attempts,
        backoff: Backoff { base_ms, cap_ms },
        ..JobOptions::default()
    }
}

fn state(q: &Queue, id: JobId) -> StateName {
    q.get(id).expect("job").state.name()
}

/// Dispatches the next job and fails it with `outcome`, answering the job and the effects.
fn run_once(q: &mut Queue, now: SystemTime, outcome: Outcome) -> (Dispatch, Effects) {
    let (d, _) = q.next_dispatch("w").expect("a job is ready");
    let fx = q.finish(now, d.id, d.lease, outcome).expect("finish");
    (d, fx)
}

#[test]
fn submit_persists_the_new_job_and_reports_it_queued() {
    let mut q = Queue::new(limits(), 1);
    let (id, fx) = q
        .submit(t(0), "add".into(), vec![0x92, 1, 2], JobOptions::default())
        .expect("submit");
    assert_eq!(
        fx.changes,
        vec![Change {
            id,
            from: None,
            to: Some(StateName::Queued)
        }]
    );
    assert!(
        matches!(&fx.persist[..], [Persist::Put(j)] if j.id == id && j.args == vec![0x92, 1, 2])
    );
    assert_eq!(
        q.get(id).expect("job").options.max_attempts,
        DEFAULT_MAX_ATTEMPTS
    );
}

#[test]
fn success_keeps_the_result() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(&mut q, t(0), "add", JobOptions::default());
    let (d, fx) = run_once(&mut q, t(1), Outcome::Ok(vec![3]));
    assert_eq!((d.id, d.attempt, d.method.as_str()), (id, 1, "add"));
    assert_eq!(fx.changes[0].to, Some(StateName::Succeeded));
    assert!(
        matches!(&q.get(id).expect("job").state, JobState::Succeeded { result, .. } if result == &vec![3])
    );
}

#[test]
fn backoff_grows_monotonically_and_stays_under_its_cap() {
    let backoff = Backoff {
        base_ms: 100,
        cap_ms: 5_000,
    };
    for seed in 0..50 {
        let mut jitter = Jitter(seed);
        let mut previous = 0;
        for failures in 1..40 {
            let d = backoff.delay_ms(failures, previous, jitter.next());
            assert!(d >= previous, "seed {seed}: delay {d} after {previous}");
            assert!(d <= backoff.cap_ms);
            assert!(d >= backoff.base_ms / 2);
            previous = d;
        }
        assert!(
            previous >= backoff.cap_ms / 2,
            "the delays reach the capped range"
        );
    }
}

#[test]
fn jitter_is_deterministic_for_a_seed_and_spreads_between_seeds() {
    let backoff = Backoff {
        base_ms: 1_000,
        cap_ms: 60_000,
    };
    let delays = |seed| {
        let mut j = Jitter(seed);
        (1..6)
            .map(|n| backoff.delay_ms(n, 0, j.next()))
            .collect::<Vec<_>>()
    };
    assert_eq!(delays(7), delays(7));
    let firsts: std::collections::HashSet<u64> = (0..20).map(|s| delays(s)[0]).collect();
    assert!(firsts.len() > 1, "jitter spreads the first retry");
}

#[test]
fn a_poison_job_is_dead_after_max_attempts_with_every_error_and_growing_delays() {
    let mut q = Queue::new(
        QueueLimits {
            keep_errors: 10,
            ..limits()
        },
        3,
    );
    let options = retried(4, 1_000, 100_000);
    let id = submit(&mut q, t(0), "poison", options);
    let mut now = t(1);
    let mut delays = Vec::new();
    for attempt in 1..=4 {
        let (d, _) = run_once(&mut q, now, Outcome::Retryable(format!("boom {attempt}")));
        assert_eq!(d.attempt, attempt);
        match q.get(id).expect("job").state.clone() {
            JobState::Retrying {
                next_run_ms,
                last_error,
            } => {
                assert_eq!(last_error, format!("boom {attempt}"));
                delays.push(next_run_ms - ms(now));
                // Not ready before its time.
                assert!(q.next_dispatch("w").is_none());
                now = UNIX_EPOCH + Duration::from_millis(next_run_ms);
                let (fx, _) = q.poll_timers(now);
                assert_eq!(fx.changes[0].to, Some(StateName::Queued));
            }
            JobState::Dead { reason, .. } => {
                assert_eq!(attempt, 4);
                assert_eq!(reason, DeadReason::AttemptsExhausted);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
    let job = q.get(id).expect("job");
    assert_eq!(job.errors_total, 4);
    let errors: Vec<_> = job
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![(1, "boom 1"), (2, "boom 2"), (3, "boom 3"), (4, "boom 4")]
    );
}

#[test]
fn errors_kept_are_bounded_and_counted() {
    let mut q = Queue::new(limits(), 3);
    let options = retried(5, 0, 0);
    let id = submit(&mut q, t(0), "poison", options);
    for n in 1..=5 {
        run_once(&mut q, t(n), Outcome::Retryable(format!("e{n}")));
        q.poll_timers(t(n));
    }
    let job = q.get(id).expect("job");
    assert_eq!(state(&q, id), StateName::Dead);
    assert_eq!(job.errors_total, 5);
    let kept: Vec<_> = job.errors.iter().map(|e| e.error.as_str()).collect();
    assert_eq!(kept, vec!["e3", "e4", "e5"]);
}

#[test]
fn a_permanent_error_is_dead_at_once() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(&mut q, t(0), "m", JobOptions::default());
    let (_, fx) = run_once(&mut q, t(1), Outcome::Permanent("bad input".into()));
    assert_eq!(fx.changes[0].to, Some(StateName::Dead));
    let job = q.get(id).expect("job");
    assert!(matches!(
        job.state,
        JobState::Dead {
            reason: DeadReason::NotRetryable,
            ..
        }
    ));
    assert_eq!(job.errors[0].error, "bad input");
    assert_eq!(job.attempts, 1);
}

#[test]
fn a_lost_worker_makes_the_job_eligible_at_once_ahead_of_the_rest() {
    let mut q = Queue::new(limits(), 1);
    let a = submit(&mut q, t(0), "m", JobOptions::default());
    let b = submit(&mut q, t(0), "m", JobOptions::default());
    let (d, _) = run_once(&mut q, t(1), Outcome::WorkerLost("peer lost".into()));
    assert_eq!(d.id, a);
    assert_eq!(state(&q, a), StateName::Queued);
    let (again, _) = q.next_dispatch("w2").expect("ready");
    assert_eq!((again.id, again.attempt), (a, 2));
    assert_eq!(q.next_dispatch("w2").expect("ready").0.id, b);
}

#[test]
fn a_stale_or_unknown_end_is_refused_and_changes_nothing() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(&mut q, t(0), "m", JobOptions::default());
    let (d, _) = q.next_dispatch("w").expect("ready");
    let err = q
        .finish(t(1), id, d.lease + 1, Outcome::Ok(vec![]))
        .expect_err("stale");
    assert!(matches!(
        err,
        QueueError::WrongState {
            state: StateName::Running,
            ..
        }
    ));
    assert_eq!(
        q.finish(t(1), JobId(99), 1, Outcome::Ok(vec![])),
        Err(QueueError::Unknown(JobId(99)))
    );
    q.finish(t(1), id, d.lease, Outcome::Ok(vec![]))
        .expect("current lease");
    assert!(
        q.finish(t(1), id, d.lease, Outcome::Ok(vec![])).is_err(),
        "a second end is stale"
    );
}

#[test]
fn replay_puts_a_dead_job_back_with_fresh_attempts_and_its_history() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(
        &mut q,
        t(0),
        "m",
        JobOptions {
            max_attempts: 1,
            ..JobOptions::default()
        },
    );
    run_once(&mut q, t(1), Outcome::Retryable("first life".into()));
    assert_eq!(state(&q, id), StateName::Dead);
    let fx = q.replay(id).expect("replay");
    assert_eq!(
        fx.changes[0],
        Change {
            id,
            from: Some(StateName::Dead),
            to: Some(StateName::Queued)
        }
    );
    let (d, _) = run_once(&mut q, t(2), Outcome::Ok(vec![1]));
    assert_eq!(d.attempt, 1);
    assert_eq!(state(&q, id), StateName::Succeeded);
    assert_eq!(q.get(id).expect("job").errors_total, 1);
    assert!(matches!(
        q.replay(id),
        Err(QueueError::WrongState {
            expected: "dead",
            ..
        })
    ));
}

#[test]
fn an_idempotency_key_answers_the_first_id_until_the_job_is_gone() {
    let mut q = Queue::new(limits(), 1);
    let keyed = || JobOptions {
        idempotency_key: Some("order-7".into()),
        ..JobOptions::default()
    };
    let first = submit(&mut q, t(0), "m", keyed());
    let (again, fx) = q
        .submit(t(1), "m".into(), vec![0x90], keyed())
        .expect("submit");
    assert_eq!(again, first);
    assert!(fx.is_empty(), "nothing new to store");
    assert_eq!(q.len(), 1);
    q.purge(&Selector::Ids(vec![first]));
    assert_ne!(submit(&mut q, t(2), "m", keyed()), first);
}

#[test]
fn queue_full_on_jobs_and_on_bytes() {
    let mut q = Queue::new(
        QueueLimits {
            max_jobs: 2,
            max_bytes: 100,
            ..limits()
        },
        1,
    );
    submit(&mut q, t(0), "m", JobOptions::default());
    submit(&mut q, t(0), "m", JobOptions::default());
    let err = q
        .submit(t(0), "m".into(), vec![], JobOptions::default())
        .expect_err("full");
    assert_eq!(
        err,
        QueueError::QueueFull {
            bound: Bound::Jobs,
            limit: 2
        }
    );
    assert!(err.to_string().starts_with("QueueFull"));

    let mut q = Queue::new(
        QueueLimits {
            max_jobs: 10,
            max_bytes: 100,
            ..limits()
        },
        1,
    );
    q.submit(t(0), "m".into(), vec![0; 90], JobOptions::default())
        .expect("fits");
    let err = q
        .submit(t(0), "m".into(), vec![0; 10], JobOptions::default())
        .expect_err("full");
    assert_eq!(
        err,
        QueueError::QueueFull {
            bound: Bound::Bytes,
            limit: 100
        }
    );
    assert_eq!(q.len(), 1, "a refused job is not held");
    assert_eq!(q.bytes(), 91);
}

#[test]
fn invalid_options_are_refused() {
    let mut q = Queue::new(limits(), 1);
    let zero = JobOptions {
        max_attempts: 0,
        ..JobOptions::default()
    };
    assert!(matches!(
        q.submit(t(0), "m".into(), vec![], zero),
        Err(QueueError::Invalid(_))
    ));
    assert!(matches!(
        q.submit(t(0), String::new(), vec![], JobOptions::default()),
        Err(QueueError::Invalid(_))
    ));
    let inverted = JobOptions {
        backoff: Backoff {
            base_ms: 10,
            cap_ms: 1,
        },
        ..JobOptions::default()
    };
    assert!(matches!(
        q.submit(t(0), "m".into(), vec![], inverted),
        Err(QueueError::Invalid(_))
    ));
}

#[test]
fn a_scheduled_job_waits_for_its_time() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(
        &mut q,
        t(0),
        "m",
        JobOptions::default().with_delay(t(0), Duration::from_secs(10)),
    );
    assert_eq!(state(&q, id), StateName::Scheduled);
    assert!(q.next_dispatch("w").is_none());
    let (fx, next) = q.poll_timers(t(9));
    assert!(fx.is_empty());
    assert_eq!(next, Some(t(10)));
    let (fx, _) = q.poll_timers(t(10));
    assert_eq!(fx.changes[0].to, Some(StateName::Queued));
    assert_eq!(q.next_dispatch("w").expect("ready").0.id, id);
}

#[test]
fn results_expire_after_the_result_ttl() {
    let mut q = Queue::new(limits(), 1);
    let id = submit(&mut q, t(0), "m", JobOptions::default());
    run_once(&mut q, t(1), Outcome::Ok(vec![1, 2, 3]));
    let (fx, next) = q.poll_timers(t(60));
    assert!(fx.is_empty());
    assert_eq!(next, Some(t(61)));
    let (fx, _) = q.poll_timers(t(61));
    assert_eq!(fx.persist, vec![Persist::Delete(id)]);
    assert_eq!(fx.changes[0].to, None);
    assert!(q.get(id).is_none());
    assert_eq!(q.bytes(), 0);
}

#[test]
fn a_waiting_job_past_its_ttl_is_dead_expired() {
    let mut q = Queue::new(limits(), 1);
    let options = JobOptions {
        ttl_ms: Some(5_000),
        ..JobOptions::default()
    };
    let id = submit(
        &mut q,
        t(0),
        "m",
        options.with_delay(t(0), Duration::from_secs(30)),
    );
    let (fx, _) = q.poll_timers(t(5));
    assert_eq!(fx.changes[0].to, Some(StateName::Dead));
    assert!(matches!(
        q.get(id).expect("job").state,
        JobState::Dead {
            reason: DeadReason::Expired,
            ..
        }
    ));
    // A queued one expires too and leaves the ready queue.
    let id = submit(
        &mut q,
        t(10),
        "m",
        JobOptions {
            ttl_ms: Some(1_000),
            ..JobOptions::default()
        },
    );
    q.poll_timers(t(11));
    assert_eq!(state(&q, id), StateName::Dead);
    assert!(q.next_dispatch("w").is_none());
}

#[test]
fn cancel_stops_waiting_and_running_jobs_but_not_finished_ones() {
    let mut q = Queue::new(limits(), 1);
    let waiting = submit(&mut q, t(0), "m", JobOptions::default());
    let running = submit(&mut q, t(0), "m", JobOptions::default());
    q.cancel(t(1), waiting).expect("cancel");
    let (d, _) = q.next_dispatch("w").expect("ready");
    assert_eq!(d.id, running, "the cancelled job left the ready queue");
    let fx = q.cancel(t(1), running).expect("cancel");
    assert_eq!(fx.abort, vec![d.lease]);
    assert!(
        q.finish(t(2), running, d.lease, Outcome::Ok(vec![]))
            .is_err(),
        "its end is dropped"
    );
    assert_eq!(state(&q, running), StateName::Cancelled);
    assert!(matches!(
        q.cancel(t(3), running),
        Err(QueueError::WrongState { .. })
    ));
    assert_eq!(
        q.cancel(t(3), JobId(99)),
        Err(QueueError::Unknown(JobId(99)))
    );
}

#[test]
fn the_concurrency_limit_holds_and_a_finished_attempt_frees_its_slot() {
    let mut q = Queue::new(
        QueueLimits {
            concurrency: 2,
            ..limits()
        },
        1,
    );
    for _ in 0..3 {
        submit(&mut q, t(0), "m", JobOptions::default());
    }
    let (a, _) = q.next_dispatch("w").expect("slot 1");
    q.next_dispatch("w").expect("slot 2");
    assert!(q.next_dispatch("w").is_none());
    q.finish(t(1), a.id, a.lease, Outcome::Ok(vec![]))
        .expect("finish");
    assert!(q.next_dispatch("w").is_some());
}

#[test]
fn dispatch_is_round_robin_between_methods_and_in_order_within_one() {
    let mut q = Queue::new(
        QueueLimits {
            concurrency: 100,
            ..limits()
        },
        1,
    );
    let a: Vec<_> = (0..4)
        .map(|_| submit(&mut q, t(0), "a", JobOptions::default()))
        .collect();
    let b: Vec<_> = (0..2)
        .map(|_| submit(&mut q, t(0), "b", JobOptions::default()))
        .collect();
    let c = submit(&mut q, t(0), "c", JobOptions::default());
    let order: Vec<_> = std::iter::from_fn(|| q.next_dispatch("w").map(|(d, _)| d.id)).collect();
    assert_eq!(order, vec![a[0], b[0], c, a[1], b[1], a[2], a[3]]);
}

#[test]
fn purge_removes_the_selected_jobs_but_not_running_ones() {
    let mut q = Queue::new(limits(), 1);
    let done = submit(&mut q, t(0), "m", JobOptions::default());
    run_once(&mut q, t(1), Outcome::Ok(vec![]));
    let running = submit(&mut q, t(1), "m", JobOptions::default());
    q.next_dispatch("w").expect("ready");
    let queued = submit(&mut q, t(1), "m", JobOptions::default());
    let (n, fx) = q.purge(&Selector::State(StateName::Succeeded));
    assert_eq!((n, fx.persist), (1, vec![Persist::Delete(done)]));
    let (n, _) = q.purge(&Selector::Ids(vec![running, queued, JobId(99)]));
    assert_eq!(n, 1);
    assert!(q.get(queued).is_none());
    assert!(q.get(running).is_some());
    assert!(
        q.next_dispatch("w").is_none(),
        "the purged job left the ready queue"
    );
}

#[test]
fn list_filters_by_state_with_a_limit_and_depth_counts_every_state() {
    let mut q = Queue::new(limits(), 1);
    let ids: Vec<_> = (0..5)
        .map(|_| submit(&mut q, t(0), "m", JobOptions::default()))
        .collect();
    run_once(&mut q, t(1), Outcome::Permanent("no".into()));
    let queued: Vec<_> = q
        .list(Some(StateName::Queued), 2)
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued, vec![ids[1], ids[2]]);
    assert_eq!(q.list(Some(StateName::Dead), 10).len(), 1);
    assert_eq!(q.list(None, 10).len(), 5);
    let depth = q.depth();
    assert_eq!(
        (
            depth[&StateName::Queued],
            depth[&StateName::Dead],
            depth[&StateName::Running]
        ),
        (4, 1, 0)
    );
}

#[test]
fn restore_requeues_running_jobs_with_their_attempt_counted_and_keeps_the_rest_waiting() {
    let mut q = Queue::new(limits(), 1);
    let running = submit(&mut q, t(0), "m", JobOptions::default());
    let last = submit(
        &mut q,
        t(0),
        "m",
        JobOptions {
            max_attempts: 1,
            ..JobOptions::default()
        },
    );
    let later = submit(
        &mut q,
        t(0),
        "m",
        JobOptions::default().with_delay(t(0), Duration::from_secs(100)),
    );
    let keyed = submit(
        &mut q,
        t(0),
        "m",
        JobOptions {
            idempotency_key: Some("k".into()),
            ..JobOptions::default()
        },
    );
    q.next_dispatch("w").expect("running");
    q.next_dispatch("w").expect("last");
    let stored: Vec<Job> = q.list(None, 100).into_iter().cloned().collect();

    let (mut r, fx) = Queue::restore(limits(), 2, stored, q.next_id(), t(5));
    assert_eq!(r.get(running).expect("job").attempts, 1);
    assert_eq!(state(&r, running), StateName::Queued);
    assert_eq!(
        state(&r, last),
        StateName::Dead,
        "its only attempt was used"
    );
    assert_eq!(state(&r, later), StateName::Scheduled);
    assert_eq!(fx.persist.len(), 2);
    let (d, _) = r.next_dispatch("w").expect("requeued first");
    assert_eq!((d.id, d.attempt), (running, 2));
    assert_eq!(r.next_dispatch("w").expect("then the queued").0.id, keyed);
    assert_eq!(
        r.submit(
            t(6),
            "m".into(),
            vec![],
            JobOptions {
                idempotency_key: Some("k".into()),
                ..JobOptions::default()
            }
        )
        .expect("submit")
        .0,
        keyed
    );
    assert!(
        r.submit(t(6), "m".into(), vec![], JobOptions::default())
            .expect("submit")
            .0
            > later,
        "ids are not reused"
    );
    assert_eq!(r.bytes(), q.bytes() + 1);
}

#[test]
fn options_stored_before_the_trace_context_still_read() {
    // `JobOptions` as stored before it had `traceparent`: the same fields, in order.
    #[derive(Serialize)]
    struct Before {
        idempotency_key: Option<String>,
        max_attempts: u32,
        backoff: Backoff,
        run_at_ms: Option<u64>,
        timeout_ms: Option<u64>,
        ttl_ms: Option<u64>,
    }
    let before = Before {
        idempotency_key: Some("k".into()),
        max_attempts: 3,
        backoff: Backoff::default(),
        run_at_ms: None,
        timeout_ms: Some(500),
        ttl_ms: None,
    };
    let stored = rmp_serde::to_vec(&before).expect("encodes");
    let read: JobOptions = rmp_serde::from_slice(&stored).expect("an old record reads");
    assert_eq!(
        read,
        JobOptions {
            idempotency_key: Some("k".into()),
            max_attempts: 3,
            timeout_ms: Some(500),
            ..JobOptions::default()
        }
    );
    assert_eq!(read.traceparent, None);
}
