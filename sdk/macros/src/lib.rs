//! The `#[task]` attribute of `taskflow-sdk`. Use it through
//! `taskflow_sdk::task`; this crate is an implementation detail.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type, parse_macro_input};

/// Turns a function into the entry point of a TaskFlow task component.
///
/// The function takes one argument (the input) and returns
/// `Result<Output, E>` where `E: Into<taskflow_sdk::TaskError>`. Input and
/// output are JSON (any serde type) unless their type is `Vec<u8>` or
/// `taskflow_sdk::Bytes`, which pass the raw bytes. See the `taskflow-sdk`
/// crate docs for the full story.
#[proc_macro_attribute]
pub fn task(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        return syn::Error::new(proc_macro2::Span::call_site(), "#[task] takes no arguments")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match expand(&function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(function: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let signature = &function.sig;
    if signature.asyncness.is_some() {
        return Err(syn::Error::new(
            signature.span(),
            "a task function cannot be async",
        ));
    }
    if !signature.generics.params.is_empty() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "a task function cannot be generic",
        ));
    }
    let input_type = match signature.inputs.iter().collect::<Vec<_>>().as_slice() {
        [FnArg::Typed(argument)] => &*argument.ty,
        _ => {
            return Err(syn::Error::new(
                signature.inputs.span(),
                "a task function takes exactly one argument: its input",
            ));
        }
    };
    let output_type = match &signature.output {
        ReturnType::Type(_, ty) => result_ok_type(ty).ok_or_else(|| {
            syn::Error::new(
                ty.span(),
                "a task function returns Result<Output, impl Into<TaskError>>",
            )
        })?,
        ReturnType::Default => {
            return Err(syn::Error::new(
                signature.span(),
                "a task function returns Result<Output, impl Into<TaskError>>",
            ));
        }
    };
    let name = &signature.ident;
    let decode = if is_raw(input_type) {
        quote!(::taskflow_sdk::__private::decode_raw)
    } else {
        quote!(::taskflow_sdk::__private::decode_json)
    };
    let encode = if is_raw(output_type) {
        quote!(::taskflow_sdk::__private::encode_raw)
    } else {
        quote!(::taskflow_sdk::__private::encode_json)
    };
    let entry = format_ident!("__TaskflowTask_{}", name);
    Ok(quote! {
        #function

        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        struct #entry;

        impl ::taskflow_sdk::__private::Guest for #entry {
            fn run(
                input: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::taskflow_sdk::__private::WitTaskError> {
                ::taskflow_sdk::__private::run(input, #decode, #name, #encode)
            }
        }

        ::taskflow_sdk::__private::export_task!(#entry with_types_in ::taskflow_sdk::__private::bindings);
    })
}

/// `T` of `Result<T, E>` (by the last path segment's name, so aliases like
/// `std::result::Result` work too).
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments else {
        return None;
    };
    match arguments.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

/// Whether a type is passed as raw bytes: `Vec<u8>` or `Bytes`.
fn is_raw(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let Some(segment) = path.path.segments.last() else {
        return false;
    };
    if segment.ident == "Bytes" {
        return true;
    }
    if segment.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments else {
        return false;
    };
    matches!(
        arguments.args.first(),
        Some(syn::GenericArgument::Type(Type::Path(inner))) if inner.path.is_ident("u8")
    )
}
