//! Small helpers to read tags by name with precise errors.

use nostr::prelude::{Event, EventId, PublicKey, Tag, Tags};

use crate::ProtocolError;

/// Verify id and signature, then check the kind. Every public parser starts here.
/// Build and sign an event of `kind`: the one way every message type here becomes an event.
pub(crate) fn sign(
    kind: u16,
    content: impl Into<String>,
    tags: Vec<nostr::prelude::Tag>,
    keys: &nostr::prelude::Keys,
) -> Result<Event, ProtocolError> {
    use nostr::prelude::{EventBuilder, FinalizeEvent};
    EventBuilder::new(crate::kinds::kind(kind), content)
        .tags(tags)
        .finalize(keys)
        .map_err(|e| ProtocolError::Signing(e.to_string()))
}

pub(crate) fn verified(event: &Event, kind: u16) -> Result<(), ProtocolError> {
    check(true, event, kind)
}

/// Check the kind and, if `verify`, the id and signature.
pub(crate) fn check(verify: bool, event: &Event, kind: u16) -> Result<(), ProtocolError> {
    if event.kind.as_u16() != kind {
        return Err(ProtocolError::WrongKind {
            expected: kind,
            found: event.kind.as_u16(),
        });
    }
    if !verify {
        return Ok(());
    }
    if !event.verify_id() {
        return Err(ProtocolError::InvalidId);
    }
    if !event.verify_signature() {
        return Err(ProtocolError::InvalidSignature);
    }
    Ok(())
}

/// All tags called `name`, as slices of their values (name excluded).
pub(crate) fn all<'a>(tags: &'a Tags, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
    tags.iter()
        .map(Tag::as_slice)
        .filter(move |t| t[0] == name)
        .map(|t| &t[1..])
}

/// The tag called `name` if present; an error if it appears more than once.
pub(crate) fn opt<'a>(
    tags: &'a Tags,
    name: &'static str,
) -> Result<Option<&'a [String]>, ProtocolError> {
    let mut it = all(tags, name);
    let first = it.next();
    if it.next().is_some() {
        return Err(ProtocolError::DuplicateTag(name));
    }
    Ok(first)
}

/// The tag called `name`, which must appear exactly once with at least one value.
pub(crate) fn one<'a>(tags: &'a Tags, name: &'static str) -> Result<&'a [String], ProtocolError> {
    let v = opt(tags, name)?.ok_or(ProtocolError::MissingTag(name))?;
    if v.is_empty() {
        return Err(ProtocolError::tag(name, "has no value"));
    }
    Ok(v)
}

/// First value of a once-only tag.
pub(crate) fn value<'a>(tags: &'a Tags, name: &'static str) -> Result<&'a str, ProtocolError> {
    Ok(&one(tags, name)?[0])
}

/// First value of an optional once-only tag.
pub(crate) fn opt_value<'a>(
    tags: &'a Tags,
    name: &'static str,
) -> Result<Option<&'a str>, ProtocolError> {
    match opt(tags, name)? {
        Some([v, ..]) => Ok(Some(v)),
        Some([]) => Err(ProtocolError::tag(name, "has no value")),
        None => Ok(None),
    }
}

pub(crate) fn parse_u64(tag: &'static str, s: &str) -> Result<u64, ProtocolError> {
    // Reject signs, spaces and leading '+', which `u64::from_str` tolerates only partly.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::tag(
            tag,
            format!("`{s}` is not an unsigned integer"),
        ));
    }
    s.parse()
        .map_err(|_| ProtocolError::tag(tag, format!("`{s}` is out of range")))
}

pub(crate) fn parse_u32(tag: &'static str, s: &str) -> Result<u32, ProtocolError> {
    let v = parse_u64(tag, s)?;
    u32::try_from(v).map_err(|_| ProtocolError::tag(tag, format!("`{s}` is out of range")))
}

pub(crate) fn parse_event_id(tag: &'static str, s: &str) -> Result<EventId, ProtocolError> {
    EventId::from_hex(s).map_err(|_| ProtocolError::tag(tag, "not a 32-byte hex event id"))
}

pub(crate) fn parse_pubkey(tag: &'static str, s: &str) -> Result<PublicKey, ProtocolError> {
    PublicKey::from_hex(s).map_err(|_| ProtocolError::tag(tag, "not a 32-byte hex public key"))
}

/// The `e` tag carrying `marker` at index 3 (`["e", id, relay, marker]`).
pub(crate) fn marked_e(tags: &Tags, marker: &'static str) -> Result<EventId, ProtocolError> {
    let mut found = None;
    for t in all(tags, "e") {
        if t.get(2).map(String::as_str) == Some(marker) {
            if found.is_some() {
                return Err(ProtocolError::DuplicateTag("e"));
            }
            found = Some(parse_event_id("e", &t[0])?);
        }
    }
    found.ok_or(ProtocolError::tag(
        "e",
        format!("no `e` tag marked `{marker}`"),
    ))
}

/// The single `p` tag.
pub(crate) fn single_p(tags: &Tags) -> Result<PublicKey, ProtocolError> {
    parse_pubkey("p", value(tags, "p")?)
}

/// The single unmarked-or-any `e` tag.
pub(crate) fn single_e(tags: &Tags) -> Result<EventId, ProtocolError> {
    parse_event_id("e", value(tags, "e")?)
}

/// Build a tag from a name and values (never empty, so it cannot fail).
pub(crate) fn tag<I, S>(name: &str, values: I) -> Tag
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Tag::custom(name, values)
}

pub(crate) fn marked_e_tag(id: &EventId, marker: &str) -> Tag {
    tag("e", [id.to_hex(), String::new(), marker.to_owned()])
}

pub(crate) fn has_flag(tags: &Tags, name: &str) -> bool {
    all(tags, name).next().is_some()
}
