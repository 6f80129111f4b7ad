//! Provides the `_zerorpc_*` introspection methods every node answers, in the shapes the
//! stock zerorpc client and CLI expect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rmpv::Value;

use crate::service::{HandlerError, Method, Service};

/// What `_zerorpc_inspect` reports per method.
#[derive(Clone)]
struct MethodInfo {
    doc: Option<String>,
    args: Option<Vec<String>>,
}

/// Adds the built-ins to a complete method table (so listings include every method).
pub(super) fn register(node_name: &str, methods: &mut HashMap<String, Arc<Method>>) {
    let public: BTreeMap<String, MethodInfo> = methods
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(name, m)| {
            let info = MethodInfo {
                doc: m.doc.clone(),
                args: m.arg_names.clone(),
            };
            (name.clone(), info)
        })
        .collect();
    let public = Arc::new(public);
    let name = node_name.to_owned();

    let inspect = {
        let methods = public
            .iter()
            .map(|(m, info)| {
                let args = match &info.args {
                    Some(names) => Value::Array(
                        names
                            .iter()
                            .map(|a| {
                                Value::Map(vec![(Value::from("name"), Value::from(a.as_str()))])
                            })
                            .collect(),
                    ),
                    None => Value::Nil,
                };
                let doc = info.doc.as_deref().map(Value::from).unwrap_or(Value::Nil);
                let entry =
                    Value::Map(vec![(Value::from("args"), args), (Value::from("doc"), doc)]);
                (Value::from(m.as_str()), entry)
            })
            .collect();
        Value::Map(vec![
            (Value::from("name"), Value::from(name.as_str())),
            (Value::from("methods"), Value::Map(methods)),
        ])
    };

    let lookup = {
        let public = public.clone();
        move |method: &str| {
            public
                .get(method)
                .cloned()
                .ok_or_else(|| HandlerError::new("KeyError", format!("'{method}'")))
        }
    };

    let ping_name = name.clone();
    let help_lookup = lookup.clone();
    let builtins = Service::new("_zerorpc")
        .method("ping", move || {
            let n = ping_name.clone();
            async move { Ok::<_, HandlerError>(("pong", n)) }
        })
        .method("name", move || {
            let n = name.clone();
            async move { Ok::<_, HandlerError>(n) }
        })
        .method("list", {
            let list: Vec<String> = public.keys().cloned().collect();
            move || {
                let list = list.clone();
                async move { Ok::<_, HandlerError>(list) }
            }
        })
        .method("help", move |method: String| {
            let found = help_lookup(&method);
            async move { found.map(|info| info.doc) }
        })
        .method("args", move |method: String| {
            let found = lookup(&method);
            // getargspec shape: [args, varargs, keywords, defaults]
            async move { found.map(|info| (info.args.unwrap_or_default(), (), (), ())) }
        })
        .method("inspect", move || {
            let v = inspect.clone();
            async move { Ok::<_, HandlerError>(v) }
        });
    for (method, entry) in builtins.methods {
        methods.insert(format!("_zerorpc_{method}"), Arc::new(entry));
    }
}
