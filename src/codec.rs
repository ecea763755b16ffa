//! The protobuf codec of the `numbering.v1` services and clients: prost's,
//! except that a request which does not decode (invalid UTF-8 in a string,
//! bytes that are not protobuf) is the caller's fault, `INVALID_ARGUMENT`
//! naming the field, not the `INTERNAL` of a server fault. A reply that does
//! not decode stays `INTERNAL`.

use std::marker::PhantomData;

use prost::{Message, Name, bytes::Buf};
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

use crate::server::validation::{FieldViolation, InvalidArgument};

/// Encodes `T` and decodes `U` as prost does; see the module docs for how a
/// decode failure answers.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes `U`; see the module docs.
#[derive(Debug)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Name + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if U::NAME.ends_with("Request") {
            decode_request(buf).map(Some)
        } else {
            U::decode(buf)
                .map(Some)
                .map_err(|error| Status::internal(error.to_string()))
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes a request as the servers do.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field that does not decode (`""` for the
/// request as a whole).
pub fn decode_request<U: Message + Name + Default>(bytes: impl Buf) -> Result<U, Status> {
    U::decode(bytes).map_err(|error| undecodable(U::NAME, &error).into())
}

/// A request of type `message` that failed to decode, as a violation of the
/// field prost was reading (the request itself, `""`, when none).
fn undecodable(message: &str, error: &prost::DecodeError) -> InvalidArgument {
    let text = error.to_string();
    let (field, why) = failed_field(&text);
    InvalidArgument(vec![FieldViolation {
        description: if field.is_empty() {
            format!("is not a {message} message: {why}")
        } else {
            format!("does not decode: {why}")
        },
        field,
    }])
}

/// The field path (`line_items.description`) and the reason in prost's
/// message `failed to decode Protobuf message: LineItem.description:
/// CreateInvoiceRequest.line_items: invalid string value: …`, whose
/// `Message.field` entries run from the innermost out.
fn failed_field(message: &str) -> (String, &str) {
    let mut rest = message
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(message);
    let mut fields = Vec::new();
    while let Some((entry, after)) = rest.split_once(": ") {
        let Some((owner, field)) = entry.split_once('.') else {
            break;
        };
        let is_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name(owner) || !is_name(field) {
            break;
        }
        fields.push(field);
        rest = after;
    }
    fields.reverse();
    (fields.join("."), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_field_is_read_outermost_first() {
        assert_eq!(
            failed_field(
                "failed to decode Protobuf message: LineItem.description: \
                 CreateInvoiceRequest.line_items: invalid string value: data is not UTF-8 encoded"
            ),
            (
                "line_items.description".to_owned(),
                "invalid string value: data is not UTF-8 encoded"
            )
        );
        assert_eq!(
            failed_field("failed to decode Protobuf message: invalid wire type value: 7"),
            (String::new(), "invalid wire type value: 7")
        );
    }
}
