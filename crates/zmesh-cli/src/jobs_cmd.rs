//! Runs `zmesh jobs VERB`: each verb is one call of a job queue's `jobs.*` methods
//! (docs/JOBS.md), its arguments taken from the command line and its answer printed as
//! JSON, as `zmesh call` prints results.

/// The options of `zmesh jobs`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    pub(crate) verb: Verb,
    /// Give up after this many seconds (`result --wait` adds its wait).
    #[arg(long, global = true, default_value_t = 30.0, value_parser = crate::positive_seconds)]
    pub(crate) timeout: f64,
    #[command(flatten)]
    pub(crate) connect: crate::ConnectArgs,
    #[command(flatten)]
    pub(crate) key: crate::mesh_key::KeyArgs,
}

/// What to ask the queue at ENDPOINT.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Verb {
    /// Submit a job: METHOD called with ARGS (each JSON, or a word taken as a string, as in
    /// `zmesh call`); prints `{id, durability}` once the queue has stored it.
    Submit {
        endpoint: zmesh_core::Endpoint,
        method: String,
        args: Vec<String>,
        /// Submit options as a JSON object: idempotency_key, max_attempts,
        /// backoff_base_ms, backoff_cap_ms, delay_ms, run_at_ms, timeout_ms, ttl_ms.
        #[arg(long, value_name = "JSON")]
        options: Option<String>,
    },
    /// A job's state, attempts and errors.
    Status {
        endpoint: zmesh_core::Endpoint,
        id: String,
    },
    /// A job's result: waits up to --wait seconds for it to finish; prints
    /// `{status: succeeded|failed|pending|unknown, ...}`.
    Result {
        endpoint: zmesh_core::Endpoint,
        id: String,
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
    /// Cancel a job (a running one's call is dropped).
    Cancel {
        endpoint: zmesh_core::Endpoint,
        id: String,
    },
    /// Jobs in a state (all without one), at most --limit.
    List {
        endpoint: zmesh_core::Endpoint,
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Dead jobs with every attempt's error.
    Dead {
        endpoint: zmesh_core::Endpoint,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Put a dead job back in the queue, its attempts counted afresh.
    Replay {
        endpoint: zmesh_core::Endpoint,
        id: String,
    },
    /// Remove the finished jobs of a state, or the jobs whose ids are given.
    Purge {
        endpoint: zmesh_core::Endpoint,
        /// A state name, or job ids.
        what: Vec<String>,
    },
    /// Depth per state, jobs and bytes held, attempts, durability.
    Stats { endpoint: zmesh_core::Endpoint },
}

impl Verb {
    /// The queue's endpoint, the method to call and its arguments as `zmesh call` reads
    /// them, and how much longer than --timeout the call may take.
    pub(crate) fn call(&self) -> (&zmesh_core::Endpoint, &'static str, Vec<String>, f64) {
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        match self {
            Self::Submit {
                endpoint,
                method,
                args,
                options,
            } => {
                let args = format!(
                    "[{}]",
                    args.iter()
                        .map(|a| match crate::json::parse_arg(a) {
                            Ok(v) => crate::json::to_json(&v).to_string(),
                            Err(_) => quoted(a),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let options = options.clone().unwrap_or_else(|| "null".into());
                (
                    endpoint,
                    "jobs.submit",
                    vec![quoted(method), args, options],
                    0.0,
                )
            }
            Self::Status { endpoint, id } => (endpoint, "jobs.status", vec![id.clone()], 0.0),
            Self::Result { endpoint, id, wait } => (
                endpoint,
                "jobs.result",
                vec![id.clone(), ((wait * 1000.0) as u64).to_string()],
                *wait,
            ),
            Self::Cancel { endpoint, id } => (endpoint, "jobs.cancel", vec![id.clone()], 0.0),
            Self::List {
                endpoint,
                state,
                limit,
            } => (
                endpoint,
                "jobs.list",
                vec![
                    state.as_deref().map_or_else(|| "null".into(), quoted),
                    limit.to_string(),
                ],
                0.0,
            ),
            Self::Dead { endpoint, limit } => (endpoint, "jobs.dead", vec![limit.to_string()], 0.0),
            Self::Replay { endpoint, id } => (endpoint, "jobs.replay", vec![id.clone()], 0.0),
            Self::Purge { endpoint, what } => {
                let arg = match what.as_slice() {
                    [state] if state.parse::<u64>().is_err() => quoted(state),
                    ids => format!("[{}]", ids.join(",")),
                };
                (endpoint, "jobs.purge", vec![arg], 0.0)
            }
            Self::Stats { endpoint } => (endpoint, "jobs.stats", Vec::new(), 0.0),
        }
    }
}
