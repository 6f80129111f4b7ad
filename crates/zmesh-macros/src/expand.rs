//! Generates, from a checked [`Service`], the trait as implementors write it, the typed
//! client `{Trait}Client`, the typed job submitter `{Trait}Jobs` and the server
//! `{Trait}Server`.
//!
//! The trait's `async fn`s become `fn .. -> impl Future<Output = ..> + Send`, so a server can
//! run every call on any runtime thread; implementations still write `async fn`. The client
//! sends `service.method` with positional arguments through `zmesh::Call`, and the server
//! registers each method on a `zmesh::Service` with its doc, argument names and markers, so
//! the wire is what a hand-written service puts on it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{TraitItem, parse_quote};

use crate::model::{Method, Output, Service};

pub(crate) fn expand(service: &Service) -> TokenStream {
    let trait_item = service_trait(service);
    let client = client(service);
    let jobs = jobs(service);
    let server = server(service);
    quote! {
        #trait_item
        #client
        #jobs
        #server
    }
}

/// The trait with each `async fn` as a `Send` future, and `Send + Sync + 'static` on it.
fn service_trait(service: &Service) -> TokenStream {
    let mut item = service.item.clone();
    item.supertraits = parse_quote!(::core::marker::Send + ::core::marker::Sync + 'static);
    item.colon_token = Some(Default::default());
    for trait_item in &mut item.items {
        let TraitItem::Fn(function) = trait_item else {
            continue;
        };
        let sig = &mut function.sig;
        sig.asyncness = None;
        let output = match &sig.output {
            syn::ReturnType::Type(_, ty) => ty.clone(),
            syn::ReturnType::Default => parse_quote!(()),
        };
        sig.output = parse_quote! {
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
        };
    }
    quote!(#item)
}

fn client(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let vis = &service.item.vis;
    let trait_ident = &service.item.ident;
    let ident = format_ident!("{}Client", trait_ident);
    let name = &service.name;
    let doc = format!(
        "A typed client of the [`{trait_ident}`] service (`{}` on the wire), over any \
         `zmesh::Call`: a `Client`, a `MeshClient`, or a `Client` of a device's frontend.",
        if name.is_empty() {
            "unprefixed methods".to_owned()
        } else {
            format!("{name}.*")
        },
    );
    let methods = service.methods.iter().map(|m| client_method(service, m));
    quote! {
        #[doc = #doc]
        #[derive(Clone)]
        #vis struct #ident<C = #krate::Client> {
            call: C,
            options: #krate::CallOptions,
        }

        impl<C> ::core::fmt::Debug for #ident<C> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#ident))
                    .field("service", &#name)
                    .field("options", &self.options)
                    .finish_non_exhaustive()
            }
        }

        impl<C: #krate::Call> #ident<C> {
            /// The service's name on the wire (empty when its methods are unprefixed).
            pub const SERVICE: &'static str = #name;

            /// A client calling through `call` (a `Client`, a `MeshClient`, a reference to
            /// one, ...), with default call options.
            pub fn new(call: C) -> Self {
                Self {
                    call,
                    options: ::core::default::Default::default(),
                }
            }

            /// This client with `options` (deadline, trace context, ...) on every call.
            #[must_use]
            pub fn with_options(mut self, options: #krate::CallOptions) -> Self {
                self.options = options;
                self
            }

            /// The connection calls go through.
            pub fn inner(&self) -> &C {
                &self.call
            }

            #(#methods)*
        }
    }
}

/// One typed method of the client. It returns the `Call`'s future itself rather than being
/// an `async fn` generic over the `Call`: awaited in a handler (whose future must be
/// `Send`), such a generic `async fn` runs into rustc's higher-ranked lifetime limitation
/// (rust-lang/rust#100013) and the handler does not compile.
fn client_method(service: &Service, method: &Method) -> TokenStream {
    let krate = &service.krate;
    let ident = &method.ident;
    let full = method.full_name(&service.name);
    let names: Vec<_> = method.params.iter().map(|(name, _)| name).collect();
    let types: Vec<_> = method.params.iter().map(|(_, ty)| ty).collect();
    let mut doc = format!("Calls `{full}`.");
    if let Some(text) = &method.doc {
        doc = format!("{text}\n\nCalls `{full}` on the wire.");
    }
    match &method.output {
        Output::Value(ty) => quote! {
            #[doc = #doc]
            ///
            /// # Errors
            /// The call's `CallError`: the handler's error as `CallError::Remote`, the
            /// deadline, a lost peer, a connection failure.
            pub fn #ident(&self, #(#names: #types),*)
                -> impl ::core::future::Future<
                    Output = ::core::result::Result<#ty, #krate::CallError>,
                > + ::core::marker::Send + '_
            {
                #krate::Call::call_with(&self.call, #full, (#(#names,)*), self.options.clone())
            }
        },
        Output::Stream(item) => quote! {
            #[doc = #doc]
            ///
            /// # Errors
            /// As a single-value call, for the first reply; later failures arrive as items.
            pub fn #ident(&self, #(#names: #types),*)
                -> impl ::core::future::Future<
                    Output = ::core::result::Result<#krate::CallStream<#item>, #krate::CallError>,
                > + ::core::marker::Send + '_
            {
                #krate::Call::call_stream_with(
                    &self.call,
                    #full,
                    (#(#names,)*),
                    self.options.clone(),
                )
            }
        },
    }
}

/// `{Trait}Jobs<J: zmesh::Submit>`: one method per request-reply method of the trait that
/// submits it as a job (its wire name, its arguments) and answers with the queue's ticket.
/// A streaming method has no job form: a job's result is one value.
fn jobs(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let vis = &service.item.vis;
    let trait_ident = &service.item.ident;
    let ident = format_ident!("{}Jobs", trait_ident);
    let name = &service.name;
    let doc = format!(
        "Submits the methods of the [`{trait_ident}`] service as durable jobs through any \
         `zmesh::Submit` (a job queue's client): each method answers with the job's ticket \
         once the queue has stored it, and the queue makes the call later, at least once. \
         Streaming methods have no job form."
    );
    let methods = service
        .methods
        .iter()
        .filter(|m| matches!(m.output, Output::Value(_)))
        .map(|m| {
            let method_ident = &m.ident;
            let full = m.full_name(&service.name);
            let names: Vec<_> = m.params.iter().map(|(name, _)| name).collect();
            let types: Vec<_> = m.params.iter().map(|(_, ty)| ty).collect();
            let doc = format!("Submits a call of `{full}` as a job.");
            quote! {
                #[doc = #doc]
                ///
                /// # Errors
                /// The submission's `CallError`: the queue's refusal or a failed call to it.
                pub fn #method_ident(&self, #(#names: #types),*)
                    -> impl ::core::future::Future<
                        Output = ::core::result::Result<J::Ticket, #krate::CallError>,
                    > + ::core::marker::Send + '_
                {
                    #krate::Submit::submit(&self.jobs, #full, (#(#names,)*))
                }
            }
        });
    quote! {
        #[doc = #doc]
        #[derive(Clone)]
        #vis struct #ident<J> {
            jobs: J,
        }

        impl<J> ::core::fmt::Debug for #ident<J> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#ident))
                    .field("service", &#name)
                    .finish_non_exhaustive()
            }
        }

        impl<J: #krate::Submit> #ident<J> {
            /// Submits through `jobs` (a job queue's client, a reference to one, ...).
            pub fn new(jobs: J) -> Self {
                Self { jobs }
            }

            /// The queue's client submissions go through.
            pub fn inner(&self) -> &J {
                &self.jobs
            }

            #(#methods)*
        }
    }
}

fn server(service: &Service) -> TokenStream {
    let krate = &service.krate;
    let vis = &service.item.vis;
    let trait_ident = &service.item.ident;
    let ident = format_ident!("{}Server", trait_ident);
    let name = &service.name;
    let doc = format!(
        "Serves an implementation of [`{trait_ident}`]: `into_service()` (or `.into()`) gives \
         the `Service` a node hosts."
    );
    let registrations = service.methods.iter().map(|m| register(krate, m));
    quote! {
        #[doc = #doc]
        #vis struct #ident<T> {
            imp: ::std::sync::Arc<T>,
        }

        impl<T> ::core::fmt::Debug for #ident<T> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#ident))
                    .field("service", &#name)
                    .finish_non_exhaustive()
            }
        }

        impl<T: #trait_ident> #ident<T> {
            /// Serves `imp`; every call shares it.
            pub fn new(imp: T) -> Self {
                Self::from_arc(::std::sync::Arc::new(imp))
            }

            /// Serves an implementation the caller also keeps a handle on.
            pub fn from_arc(imp: ::std::sync::Arc<T>) -> Self {
                Self { imp }
            }

            /// The service, every method registered with its doc comment, argument names
            /// and markers.
            pub fn into_service(self) -> #krate::Service {
                let service = #krate::Service::new(#name).with_shared_state(self.imp);
                #(#registrations)*
                #krate::Service::from(service)
            }
        }

        impl<T: #trait_ident> ::core::convert::From<#ident<T>> for #krate::Service {
            fn from(server: #ident<T>) -> Self {
                server.into_service()
            }
        }
    }
}

/// `let service = service.method(..)` (or `.stream(..)`) with its doc, names and marker
/// chained on. The closure takes the service's state (the implementation) first, then the
/// `CallContext` the node hands it when the method takes one (lent to the method), then the
/// wire arguments.
fn register(krate: &syn::Path, method: &Method) -> TokenStream {
    let ident = &method.ident;
    let wire = &method.wire;
    let names: Vec<_> = method.params.iter().map(|(name, _)| name).collect();
    let types: Vec<_> = method.params.iter().map(|(_, ty)| ty).collect();
    let register = match method.output {
        Output::Value(_) => quote!(method),
        Output::Stream(_) => quote!(stream),
    };
    let doc = method.doc.as_ref().map(|doc| quote!(.doc(#doc)));
    let arg_names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    // An empty list, not none, for a method without parameters: `zmesh list` shows `()`.
    let arg_names = if arg_names.is_empty() {
        quote!(.arg_names(::core::iter::empty::<&'static str>()))
    } else {
        quote!(.arg_names([#(#arg_names),*]))
    };
    let idempotent = method.idempotent.then(|| quote!(.idempotent()));
    let (ctx_param, ctx_arg) = if method.context {
        (
            quote!(__zmesh_context: #krate::CallContext,),
            quote!(&__zmesh_context,),
        )
    } else {
        (TokenStream::new(), TokenStream::new())
    };
    quote! {
        let service = service
            .#register(#wire, move |__zmesh_imp: #krate::State<T>, #ctx_param #(#names: #types),*| {
                async move {
                    __zmesh_imp
                        .#ident(#ctx_arg #(#names),*)
                        .await
                        .map_err(::core::convert::Into::into)
                }
            })
            #doc
            #arg_names
            #idempotent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(item: TokenStream) -> String {
        let service = Service::from_trait(
            crate::model::ServiceArgs::parse(TokenStream::new()).expect("no args"),
            syn::parse2(item).expect("a trait"),
        )
        .expect("valid");
        expand(&service).to_string()
    }

    /// A method taking the context is registered as a closure whose first parameter is the
    /// node's `CallContext`, lent to the method; the client method takes wire arguments
    /// only.
    #[test]
    fn the_server_lends_the_context_and_the_client_leaves_it_out() {
        let code = expanded(quote! {
            trait Chain {
                async fn hop(&self, ctx: &zmesh::CallContext, n: u32) -> Result<u32, E>;
            }
        });
        let closure = "move | __zmesh_imp : :: zmesh :: State < T > , __zmesh_context : :: zmesh \
                       :: CallContext , n : u32 |";
        assert!(code.contains(closure), "{code}");
        assert!(
            code.contains("__zmesh_imp . hop (& __zmesh_context , n) . await"),
            "{code}"
        );
        assert!(
            code.contains("pub fn hop (& self , n : u32)"),
            "the client method has no context parameter: {code}"
        );
        assert!(code.contains("arg_names ([\"n\"])"), "{code}");
    }

    /// The job submitter has a method per request-reply method, submitting its wire name
    /// and arguments, and none for a streaming method.
    #[test]
    fn jobs_submit_value_methods_by_wire_name_and_skip_streams() {
        let code = expanded(quote! {
            trait Mailer {
                async fn send(&self, ctx: &CallContext, to: String, body: String) -> Result<u64, E>;
                #[zmesh(stream)]
                async fn watch(&self, n: u32) -> Result<ItemStream<u32>, E>;
            }
        });
        assert!(
            code.contains("struct MailerJobs < J > { jobs : J , }"),
            "{code}"
        );
        assert!(
            code.contains(
                "pub fn send (& self , to : String , body : String) -> impl :: core :: future \
                 :: Future < Output = :: core :: result :: Result < J :: Ticket , :: zmesh :: \
                 CallError > , >"
            ),
            "{code}"
        );
        assert!(
            code.contains(
                ":: zmesh :: Submit :: submit (& self . jobs , \"mailer.send\" , (to , body ,))"
            ),
            "{code}"
        );
        let jobs = &code[code
            .find("impl < J : :: zmesh :: Submit > MailerJobs")
            .expect("impl")..];
        let jobs = &jobs[..jobs.find("struct MailerServer").unwrap_or(jobs.len())];
        assert!(!jobs.contains("watch"), "no job form for a stream: {jobs}");
    }
}
