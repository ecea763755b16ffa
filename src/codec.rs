//! The protobuf codec of the `numbering.v1` services and clients: prost's,
//! except that a request which does not decode (invalid UTF-8 in a string,
//! bytes that are not protobuf) is the caller's fault, `INVALID_ARGUMENT`
//! naming the field, not the `INTERNAL` of a server fault. A reply that does
//! not decode stays `INTERNAL`. And a request with more elements in a
//! repeated field than any valid one holds is refused before it is decoded:
//! a few bytes each on the wire, its elements would take a hundred each in
//! memory (two million empty line items fit in 4 MiB).

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
/// request as a whole), or the repeated field that holds too many elements.
pub fn decode_request<U: Message + Name + Default>(bytes: impl Buf) -> Result<U, Status> {
    within_bounds(U::NAME, bytes.chunk(), bytes.remaining())?;
    U::decode(bytes).map_err(|error| undecodable(U::NAME, &error).into())
}

/// The repeated fields of requests whose elements are bounded: the
/// message, the field's number and name, and the most elements it may hold.
const BOUNDED: [(&str, u32, &str, usize); 1] = [(
    "CreateInvoiceRequest",
    10,
    "line_items",
    crate::invoices::domain::MAX_LINE_ITEMS,
)];

/// Refuses a `message` request whose bytes (`chunk`, when it holds all
/// `remaining` of them) hold more elements of a bounded repeated field than
/// it may, as that field's violation; anything else is left to the decoder,
/// bytes that do not parse included.
fn within_bounds(message: &str, chunk: &[u8], remaining: usize) -> Result<(), InvalidArgument> {
    let Some(&(_, number, field, most)) = BOUNDED.iter().find(|(name, ..)| *name == message) else {
        return Ok(());
    };
    if chunk.len() < remaining {
        return Ok(());
    }
    let mut bytes = chunk;
    let mut elements = 0;
    while bytes.has_remaining() {
        let Ok((tag, wire_type)) = prost::encoding::decode_key(&mut bytes) else {
            return Ok(());
        };
        if tag == number {
            elements += 1;
            if elements > most {
                return Err(InvalidArgument(vec![FieldViolation {
                    field: field.to_owned(),
                    description: format!("must hold 1 to {most} items"),
                }]));
            }
        }
        let context = prost::encoding::DecodeContext::default();
        if prost::encoding::skip_field(wire_type, tag, &mut bytes, context).is_err() {
            return Ok(());
        }
    }
    Ok(())
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
    fn a_bounded_repeated_field_is_counted_before_decoding() {
        use crate::proto::{CreateInvoiceRequest, LineItem};
        let request = |items| CreateInvoiceRequest {
            tenant_id: "acme".into(),
            line_items: vec![LineItem::default(); items],
            ..CreateInvoiceRequest::default()
        };
        let most = crate::invoices::domain::MAX_LINE_ITEMS;
        let at_most = request(most).encode_to_vec();
        assert!(within_bounds(CreateInvoiceRequest::NAME, &at_most, at_most.len()).is_ok());
        let over = request(most + 1).encode_to_vec();
        let refused = within_bounds(CreateInvoiceRequest::NAME, &over, over.len()).unwrap_err();
        assert_eq!(refused.0[0].field, "line_items");
        // Through the decoder too, as the writer's server runs it.
        let status = decode_request::<CreateInvoiceRequest>(&over[..]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // Another message's field of the same number is not counted.
        assert!(within_bounds("AllocateRequest", &over, over.len()).is_ok());
    }

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
