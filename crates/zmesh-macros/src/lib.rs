//! The `#[zmesh::service]` attribute: one trait describes a service, and the attribute
//! generates its typed client and its server, so no method name is written as a string.
//!
//! Parsing and checking the trait is `model`'s job (every unsupported signature becomes a
//! compile error pointing at the user's code); generating the code is `expand`'s. Read the
//! attribute's documentation on the re-export, `zmesh::service`.

use proc_macro::TokenStream;

mod expand;
mod model;

/// Generates a typed client and a server from a service trait.
///
/// See `zmesh::service` for the documentation and an example.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match model::ServiceArgs::parse(attr.into()) {
        Ok(args) => args,
        Err(error) => return error.to_compile_error().into(),
    };
    let item = match syn::parse::<syn::ItemTrait>(item) {
        Ok(item) => item,
        Err(error) => {
            return syn::Error::new(
                error.span(),
                "#[zmesh::service] goes on a trait: `trait Greeter { async fn hello(&self, \
                 name: String) -> Result<String, HandlerError>; }`",
            )
            .to_compile_error()
            .into();
        }
    };
    // On an error the trait is still emitted (without the `#[zmesh(..)]` markers only this
    // attribute understands), so the user sees the error about the signature and not a
    // cascade about a missing trait or unused imports.
    let fallback = model::without_markers(item.clone());
    match model::Service::from_trait(args, item) {
        Ok(service) => expand::expand(&service).into(),
        Err(error) => {
            let error = error.to_compile_error();
            quote::quote!(#fallback #error).into()
        }
    }
}
