//! Reads a service trait into a [`Service`]: its wire name, and per method the wire name,
//! parameters, result type, docs and markers. Everything the generated code cannot support
//! is refused here, with an error spanning the user's code that says what to write instead.

use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, Ident, ItemTrait, Lit, LitStr, Meta, Pat,
    PathArguments, ReturnType, TraitItem, TraitItemFn, Type, parse_quote,
};

/// The most parameters a method may take: `zmesh::Handler` is implemented for up to eight.
const MAX_PARAMS: usize = 8;

/// The attribute's own arguments: `#[zmesh::service(name = "...", crate = "...")]`.
#[derive(Default)]
pub(crate) struct ServiceArgs {
    name: Option<LitStr>,
    krate: Option<syn::Path>,
}

impl ServiceArgs {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = Self::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                args.name = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let path: LitStr = meta.value()?.parse()?;
                args.krate = Some(path.parse()?);
                Ok(())
            } else {
                Err(meta.error(
                    "unknown #[zmesh::service] option: expected `name = \"...\"` or \
                     `crate = \"...\"`",
                ))
            }
        });
        syn::parse::Parser::parse2(parser, tokens)?;
        Ok(args)
    }
}

/// A service trait, checked.
pub(crate) struct Service {
    /// The trait as written, minus its methods' `#[zmesh(..)]` attributes.
    pub(crate) item: ItemTrait,
    /// The path of the zmesh crate in generated code (`::zmesh` unless `crate = ".."`).
    pub(crate) krate: syn::Path,
    /// The service's wire name; empty when the methods are unprefixed.
    pub(crate) name: String,
    pub(crate) methods: Vec<Method>,
}

/// What a method answers.
pub(crate) enum Output {
    /// One value of this type.
    Value(Type),
    /// A stream of items of this type (`Result<zmesh::ItemStream<T>, E>`).
    Stream(Type),
}

/// One method of a service trait.
pub(crate) struct Method {
    pub(crate) ident: Ident,
    /// The name on the wire, without the service prefix.
    pub(crate) wire: String,
    /// Whether it takes the call's context (`ctx: &zmesh::CallContext`) right after
    /// `&self`; the context is no wire argument and not among `params`.
    pub(crate) context: bool,
    /// The wire arguments, in order.
    pub(crate) params: Vec<(Ident, Type)>,
    pub(crate) output: Output,
    /// The doc comment, as `zmesh list` shows it (`None` when there is none).
    pub(crate) doc: Option<String>,
    pub(crate) idempotent: bool,
}

impl Method {
    /// The full name a caller sends: `service.method`, or `method` when unprefixed.
    pub(crate) fn full_name(&self, service: &str) -> String {
        if service.is_empty() {
            self.wire.clone()
        } else {
            format!("{service}.{}", self.wire)
        }
    }
}

impl Service {
    pub(crate) fn from_trait(args: ServiceArgs, mut item: ItemTrait) -> syn::Result<Self> {
        let mut errors = Errors::default();
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(syn::Error::new(
                item.generics.span(),
                "a service trait cannot be generic: its methods are called by name over the \
                 wire, with concrete argument types",
            ));
        }
        if let Some(unsafety) = &item.unsafety {
            errors.push(syn::Error::new(
                unsafety.span(),
                "a service trait cannot be unsafe",
            ));
        }
        if let Some(auto) = &item.auto_token {
            errors.push(syn::Error::new(
                auto.span(),
                "a service trait cannot be auto",
            ));
        }
        if !item.supertraits.is_empty() {
            errors.push(syn::Error::new(
                item.supertraits.span(),
                "a service trait takes no supertraits: #[zmesh::service] adds `Send + Sync + \
                 'static` itself",
            ));
        }
        let name = match &args.name {
            Some(name) => {
                let value = name.value();
                if value.contains('.') || value.chars().any(char::is_whitespace) {
                    errors.push(syn::Error::new(
                        name.span(),
                        "a service name has no dots or spaces: callers send `name.method`",
                    ));
                }
                value
            }
            None => snake_case(&item.ident.to_string()),
        };
        let mut methods = Vec::new();
        for trait_item in &mut item.items {
            match trait_item {
                TraitItem::Fn(function) => match Method::from_fn(function) {
                    Ok(method) => methods.push(method),
                    Err(error) => errors.push(error),
                },
                other => errors.push(syn::Error::new(
                    other.span(),
                    "a service trait holds only `async fn` methods",
                )),
            }
        }
        if methods.is_empty() && errors.is_empty() {
            errors.push(syn::Error::new(
                item.ident.span(),
                "a service trait needs at least one `async fn` method",
            ));
        }
        for (i, method) in methods.iter().enumerate() {
            if methods[..i].iter().any(|m| m.wire == method.wire) {
                errors.push(syn::Error::new(
                    method.ident.span(),
                    format!("two methods are called `{}` on the wire", method.wire),
                ));
            }
        }
        errors.finish()?;
        let krate = args.krate.unwrap_or_else(|| parse_quote!(::zmesh));
        Ok(Self {
            item,
            krate,
            name,
            methods,
        })
    }
}

impl Method {
    /// Reads one trait method, taking its `#[zmesh(..)]` attributes off it.
    fn from_fn(function: &mut TraitItemFn) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let mut stream = false;
        let mut idempotent = false;
        let mut kept = Vec::new();
        for attr in std::mem::take(&mut function.attrs) {
            if attr.path().is_ident("zmesh") {
                let parsed = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("stream") {
                        stream = true;
                        Ok(())
                    } else if meta.path.is_ident("idempotent") {
                        idempotent = true;
                        Ok(())
                    } else {
                        Err(meta.error(
                            "unknown #[zmesh(..)] method option: expected `stream` or \
                             `idempotent`",
                        ))
                    }
                });
                if let Err(error) = parsed {
                    errors.push(error);
                }
            } else {
                kept.push(attr);
            }
        }
        function.attrs = kept;
        let doc = doc_comment(&function.attrs);
        let sig = &function.sig;
        if let Some(body) = &function.default {
            errors.push(syn::Error::new(
                body.span(),
                "a service method has no default body: implement it in the `impl` of the trait",
            ));
        }
        if sig.asyncness.is_none() {
            errors.push(syn::Error::new(
                sig.fn_token.span(),
                "a service method is an `async fn`",
            ));
        }
        if let Some(constness) = &sig.constness {
            errors.push(syn::Error::new(
                constness.span(),
                "a service method cannot be const",
            ));
        }
        if let Some(unsafety) = &sig.unsafety {
            errors.push(syn::Error::new(
                unsafety.span(),
                "a service method cannot be unsafe",
            ));
        }
        if let Some(abi) = &sig.abi {
            errors.push(syn::Error::new(
                abi.span(),
                "a service method has no extern ABI",
            ));
        }
        if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
            errors.push(syn::Error::new(
                sig.generics.span(),
                "a service method cannot be generic: its arguments are decoded from the \
                 request into concrete types",
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(syn::Error::new(
                variadic.span(),
                "a service method cannot be variadic",
            ));
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(receiver))
                if receiver.reference.is_some()
                    && receiver.mutability.is_none()
                    && receiver.colon_token.is_none() => {}
            Some(FnArg::Receiver(receiver)) => errors.push(syn::Error::new(
                receiver.span(),
                "a service method takes `&self` (the server shares one implementation between \
                 concurrent calls)",
            )),
            _ => errors.push(syn::Error::new(
                sig.ident.span(),
                "a service method takes `&self` first",
            )),
        }
        let mut params = Vec::new();
        let mut context = false;
        for (position, input) in inputs.enumerate() {
            let FnArg::Typed(typed) = input else {
                continue;
            };
            match context_kind(&typed.ty) {
                Some(ContextKind::Shared) if position == 0 => {
                    context = true;
                    continue;
                }
                Some(ContextKind::Shared) => {
                    errors.push(syn::Error::new(
                        typed.span(),
                        "the call context comes first, right after `&self`: `async fn \
                         name(&self, ctx: &zmesh::CallContext, ..)`",
                    ));
                    continue;
                }
                Some(ContextKind::Mutable) => {
                    errors.push(syn::Error::new(
                        typed.ty.span(),
                        "a service method takes the call context as `&CallContext`, not \
                         `&mut CallContext`: it is shared with what the call starts",
                    ));
                    continue;
                }
                Some(ContextKind::Owned) => {
                    errors.push(syn::Error::new(
                        typed.ty.span(),
                        "a service method takes the call context by reference, `ctx: \
                         &zmesh::CallContext` (clone it to keep it)",
                    ));
                    continue;
                }
                None => {}
            }
            let ident = match &*typed.pat {
                Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    pat.ident.clone()
                }
                other => {
                    errors.push(syn::Error::new(
                        other.span(),
                        "a service method's parameters are plain names (`name: String`): \
                         they become the argument names `zmesh list` shows",
                    ));
                    continue;
                }
            };
            if let Some(span) = borrowed(&typed.ty) {
                errors.push(syn::Error::new(
                    span,
                    "a service method's parameters are owned types (`String`, not `&str`): \
                     they are decoded from the request",
                ));
                continue;
            }
            params.push((ident, (*typed.ty).clone()));
        }
        if params.len() > MAX_PARAMS {
            errors.push(syn::Error::new(
                sig.inputs.span(),
                format!("a service method takes at most {MAX_PARAMS} parameters besides `&self`"),
            ));
        }
        let output = match result_ok_type(&sig.output) {
            Ok(ok) if stream => match item_stream_type(ok) {
                Some(item) => Some(Output::Stream(item.clone())),
                None => {
                    errors.push(syn::Error::new(
                        ok.span(),
                        "a #[zmesh(stream)] method returns `Result<zmesh::ItemStream<T>, E>`",
                    ));
                    None
                }
            },
            Ok(ok) => Some(Output::Value(ok.clone())),
            Err(error) => {
                errors.push(error);
                None
            }
        };
        if let Some(Output::Value(ty) | Output::Stream(ty)) = &output
            && let Some(span) = borrowed(ty)
        {
            errors.push(syn::Error::new(
                span,
                "a service method's result is an owned type (`String`, not `&str`): it is \
                 encoded into the reply",
            ));
        }
        errors.finish()?;
        let output = output.expect("no errors, so the output was read");
        Ok(Self {
            ident: sig.ident.clone(),
            wire: syn::ext::IdentExt::unraw(&sig.ident).to_string(),
            context,
            params,
            output,
            doc,
            idempotent,
        })
    }
}

/// `item` with the `#[zmesh(..)]` attributes taken off its methods.
pub(crate) fn without_markers(mut item: ItemTrait) -> ItemTrait {
    for trait_item in &mut item.items {
        if let TraitItem::Fn(function) = trait_item {
            function.attrs.retain(|attr| !attr.path().is_ident("zmesh"));
        }
    }
    item
}

/// How a parameter's type names the call context, if it does.
enum ContextKind {
    /// `&CallContext`: what a method takes.
    Shared,
    /// `&mut CallContext`.
    Mutable,
    /// `CallContext` by value.
    Owned,
}

/// Whether `ty` is the call context: any path ending in `CallContext` (`zmesh::CallContext`,
/// `CallContext`), behind a reference or not.
fn context_kind(ty: &Type) -> Option<ContextKind> {
    let is_context = |ty: &Type| match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "CallContext" && last.arguments.is_empty()),
        _ => false,
    };
    match ty {
        Type::Reference(reference) if is_context(&reference.elem) => {
            Some(if reference.mutability.is_some() {
                ContextKind::Mutable
            } else {
                ContextKind::Shared
            })
        }
        Type::Paren(inner) => context_kind(&inner.elem),
        ty if is_context(ty) => Some(ContextKind::Owned),
        _ => None,
    }
}

/// `T` of a method's `-> Result<T, E>`.
fn result_ok_type(output: &ReturnType) -> syn::Result<&Type> {
    const WANTED: &str = "a service method returns `Result<T, E>` (`E` converts into \
                          `zmesh::HandlerError`), such as `Result<String, HandlerError>`";
    let ReturnType::Type(_, ty) = output else {
        return Err(syn::Error::new(output.span(), WANTED));
    };
    match last_segment_args(ty, "Result") {
        Some(args) if args.len() == 2 => Ok(args[0]),
        _ => Err(syn::Error::new(ty.span(), WANTED)),
    }
}

/// `T` of `ItemStream<T>` (any path ending so: `zmesh::ItemStream<T>`).
fn item_stream_type(ty: &Type) -> Option<&Type> {
    match last_segment_args(ty, "ItemStream") {
        Some(args) if args.len() == 1 => Some(args[0]),
        _ => None,
    }
}

/// The type arguments of `ty` when it is a path whose last segment is `name<..>`.
fn last_segment_args<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a Type>> {
    let Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    Some(
        args.args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
    )
}

/// Where `ty` borrows or hides its type (a reference, a lifetime, `impl Trait`), if it does.
fn borrowed(ty: &Type) -> Option<Span> {
    struct Finder(Option<Span>);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_reference(&mut self, node: &'ast syn::TypeReference) {
            self.0.get_or_insert(node.span());
        }
        fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(node.span());
        }
        fn visit_lifetime(&mut self, node: &'ast syn::Lifetime) {
            if node.ident != "static" {
                self.0.get_or_insert(node.span());
            }
        }
    }
    let mut finder = Finder(None);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}

/// A doc comment's text: the `///` lines joined, each without the one space after `///`.
fn doc_comment(attrs: &[Attribute]) -> Option<String> {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|attr| attr.path().is_ident("doc"))
        .filter_map(|attr| match &attr.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(expr) => match &expr.lit {
                    Lit::Str(s) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .map(|line| {
            line.strip_prefix(' ')
                .unwrap_or(&line)
                .trim_end()
                .to_owned()
        })
        .collect();
    let text = lines.join("\n").trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// `Greeter` -> `greeter`, `KeyValue` -> `key_value`, `HTTPServer` -> `http_server`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects every error of a trait, so the user sees them all in one build.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;

    use super::*;

    #[test]
    fn trait_names_become_snake_case_service_names() {
        for (name, wanted) in [
            ("Greeter", "greeter"),
            ("KeyValue", "key_value"),
            ("HTTPServer", "http_server"),
            ("Echo2Way", "echo2_way"),
            ("kv", "kv"),
        ] {
            assert_eq!(snake_case(name), wanted, "{name}");
        }
    }

    fn service(attr: TokenStream, item: TokenStream) -> syn::Result<Service> {
        Service::from_trait(ServiceArgs::parse(attr)?, syn::parse2(item)?)
    }

    #[test]
    fn reads_names_params_docs_and_markers() {
        let service = service(
            quote::quote!(),
            quote::quote! {
                trait KeyValue {
                    /// Gets a value.
                    ///
                    /// Second paragraph.
                    #[zmesh(idempotent)]
                    async fn get(&self, key: String) -> Result<Option<Vec<u8>>, HandlerError>;
                    #[zmesh(stream)]
                    async fn r#watch(&self, prefix: String, limit: u32)
                        -> Result<zmesh::ItemStream<String>, HandlerError>;
                    async fn ping(&self) -> Result<(), MyError>;
                }
            },
        )
        .expect("valid");
        assert_eq!(service.name, "key_value");
        let [get, watch, ping] = &service.methods[..] else {
            panic!("three methods");
        };
        assert_eq!(get.full_name(&service.name), "key_value.get");
        assert_eq!(
            get.doc.as_deref(),
            Some("Gets a value.\n\nSecond paragraph.")
        );
        assert!(get.idempotent && !watch.idempotent);
        assert!(matches!(get.output, Output::Value(_)));
        assert_eq!(watch.wire, "watch");
        let names: Vec<String> = watch.params.iter().map(|(i, _)| i.to_string()).collect();
        assert_eq!(names, ["prefix", "limit"]);
        match &watch.output {
            Output::Stream(item) => assert_eq!(item.to_token_stream().to_string(), "String"),
            Output::Value(_) => panic!("a stream"),
        }
        assert!(ping.params.is_empty() && ping.doc.is_none());
        // The #[zmesh(..)] markers are taken off the trait the macro emits.
        let TraitItem::Fn(first) = &service.item.items[0] else {
            panic!("a fn");
        };
        assert!(first.attrs.iter().all(|a| !a.path().is_ident("zmesh")));
    }

    #[test]
    fn a_context_first_is_taken_off_the_wire_arguments() {
        let service = service(
            quote::quote!(),
            quote::quote! {
                trait Chain {
                    async fn hop(&self, ctx: &zmesh::CallContext, n: u32) -> Result<u32, E>;
                    async fn short(&self, c: &CallContext) -> Result<(), E>;
                    async fn none(&self, n: u32) -> Result<u32, E>;
                }
            },
        )
        .expect("valid");
        let [hop, short, none] = &service.methods[..] else {
            panic!("three methods");
        };
        assert!(hop.context && short.context && !none.context);
        let names: Vec<String> = hop.params.iter().map(|(i, _)| i.to_string()).collect();
        assert_eq!(names, ["n"], "the context is not a wire argument");
        assert!(short.params.is_empty());
    }

    #[test]
    fn a_context_not_first_mutable_or_owned_is_refused() {
        let error = service(
            quote::quote!(),
            quote::quote! {
                trait Bad {
                    async fn late(&self, n: u32, ctx: &CallContext) -> Result<(), E>;
                    async fn twice(&self, a: &CallContext, b: &CallContext) -> Result<(), E>;
                    async fn mutable(&self, ctx: &mut zmesh::CallContext) -> Result<(), E>;
                    async fn owned(&self, ctx: CallContext) -> Result<(), E>;
                }
            },
        )
        .err()
        .expect("refused");
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        let count = |wanted: &str| messages.iter().filter(|m| m.contains(wanted)).count();
        assert_eq!(
            count("comes first, right after `&self`"),
            2,
            "{messages:#?}"
        );
        assert_eq!(count("not `&mut CallContext`"), 1, "{messages:#?}");
        assert_eq!(count("by reference"), 1, "{messages:#?}");
        assert_eq!(messages.len(), 4, "{messages:#?}");
    }

    #[test]
    fn an_empty_name_leaves_methods_unprefixed() {
        let service = service(
            quote::quote!(name = ""),
            quote::quote! {
                trait Stock { async fn upper(&self, s: String) -> Result<String, E>; }
            },
        )
        .expect("valid");
        assert_eq!(service.methods[0].full_name(&service.name), "upper");
    }

    #[test]
    fn every_unsupported_signature_is_reported_at_once() {
        let error = service(
            quote::quote!(),
            quote::quote! {
                trait Bad {
                    fn not_async(&self) -> Result<(), E>;
                    async fn no_self(x: u32) -> Result<(), E>;
                    async fn borrowed(&self, s: &str) -> Result<(), E>;
                    async fn no_result(&self) -> u32;
                    #[zmesh(stream)]
                    async fn not_a_stream(&self) -> Result<u32, E>;
                    #[zmesh(fast)]
                    async fn unknown_option(&self) -> Result<(), E>;
                }
            },
        )
        .err()
        .expect("refused");
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        for wanted in [
            "is an `async fn`",
            "takes `&self` first",
            "owned types",
            "returns `Result<T, E>`",
            "returns `Result<zmesh::ItemStream<T>, E>`",
            "unknown #[zmesh(..)] method option",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(wanted)),
                "no error says {wanted:?}: {messages:#?}"
            );
        }
    }
}
