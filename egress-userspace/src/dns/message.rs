//! DNS messages as the proxy sees them: the question of a query, refusals,
//! and the addresses an answer gives for a name (following CNAMEs). Never
//! panics on malformed input: every failure is an `Err`.

use std::net::IpAddr;

use hickory_resolver::proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{Name, RData, RecordType},
};

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: RecordType,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("not a DNS message")]
    Malformed,
    #[error("not a standard query with exactly one question")]
    NotAQuery,
    #[error("the answer is for another query")]
    Mismatch,
}

/// A name as the rules compare it: lower case, no trailing dot.
pub fn normal(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

/// Parses a client's query.
pub fn question(bytes: &[u8]) -> Result<(Message, Question), MessageError> {
    let msg = Message::from_vec(bytes).map_err(|_| MessageError::Malformed)?;
    if msg.message_type() != MessageType::Query
        || msg.op_code() != OpCode::Query
        || msg.queries().len() != 1
    {
        return Err(MessageError::NotAQuery);
    }
    let q = &msg.queries()[0];
    let name = normal(q.name());
    // A label holding a dot (or anything escaped) would print like a name
    // it is not: `x\.cdn.example` is not below cdn.example.
    if name.contains('\\') {
        return Err(MessageError::Malformed);
    }
    let question = Question {
        id: msg.id(),
        name,
        qtype: q.query_type(),
    };
    Ok((msg, question))
}

/// The query egressd sends upstream for a question: built afresh (lower
/// case, one question, recursion desired, nothing else), so that nothing
/// the client put in its query (flags, EDNS options, extra records) goes
/// out with it.
pub fn upstream_query(q: &Question) -> Option<Vec<u8>> {
    use hickory_resolver::proto::op::Query;
    let name = Name::from_ascii(format!("{}.", q.name)).ok()?;
    let mut m = Message::new();
    m.set_id(q.id)
        .set_recursion_desired(true)
        .add_query(Query::query(name, q.qtype));
    m.to_vec().ok()
}

/// A reply to `query` carrying only a response code (REFUSED, SERVFAIL).
pub fn reply_code(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut r = Message::error_msg(query.id(), query.op_code(), code);
    r.set_recursion_desired(query.recursion_desired());
    r.set_recursion_available(true);
    for q in query.queries() {
        r.add_query(q.clone());
    }
    r.to_vec().unwrap_or_default()
}

/// The id (first two bytes) of a message too broken to parse, if any.
pub fn raw_id(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// A FORMERR reply to a query that could not be parsed.
pub fn format_error(id: u16) -> Vec<u8> {
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .unwrap_or_default()
}

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;

/// Checks that `answer` answers `question`; returns the parsed answer, and
/// the A and AAAA addresses it gives for the question's name (directly or
/// through CNAMEs) with the smallest TTL among the records used.
pub fn addresses(
    question: &Question,
    answer: &[u8],
) -> Result<(Message, Vec<IpAddr>, u32), MessageError> {
    let msg = Message::from_vec(answer).map_err(|_| MessageError::Malformed)?;
    let same = msg.id() == question.id
        && msg.message_type() == MessageType::Response
        && msg.queries().len() == 1
        && normal(msg.queries()[0].name()) == question.name
        && msg.queries()[0].query_type() == question.qtype;
    if !same {
        return Err(MessageError::Mismatch);
    }
    let mut chain = vec![question.name.clone()];
    let mut ttl = u32::MAX;
    // Follow CNAMEs from the question's name only: records for other names
    // in the answer section allow nothing.
    for _ in 0..MAX_CHAIN {
        let last = chain.last().expect("non-empty").clone();
        let next = msg.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if normal(r.name()) == last => Some((normal(&c.0), r.ttl())),
            _ => None,
        });
        match next {
            Some((target, t)) if !chain.contains(&target) => {
                ttl = ttl.min(t);
                chain.push(target);
            }
            _ => break,
        }
    }
    let mut ips = Vec::new();
    for r in msg.answers() {
        if !chain.contains(&normal(r.name())) {
            continue;
        }
        let ip = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = ttl.min(r.ttl());
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let ttl = if ips.is_empty() { 0 } else { ttl };
    Ok((msg, ips, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::{
        op::Query,
        rr::{
            rdata::{A, AAAA, CNAME},
            Record,
        },
    };
    use std::str::FromStr;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn answer(name: &str, t: RecordType, records: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(Name::from_str(name).unwrap(), t));
        for r in records {
            m.add_answer(r);
        }
        m.to_vec().unwrap()
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
    }

    #[test]
    fn parses_a_question() {
        let (_, q) = question(&query("API.Model.test.", RecordType::A)).unwrap();
        assert_eq!(q.name, "api.model.test");
        assert_eq!(q.id, 7);
        assert_eq!(question(b"\x00"), Err(MessageError::Malformed));
        let resp = answer("a.test.", RecordType::A, vec![]);
        assert_eq!(question(&resp).unwrap_err(), MessageError::NotAQuery);
    }

    #[test]
    fn follows_cnames_and_ignores_unrelated_records() {
        let (_, q) = question(&query("www.a.test.", RecordType::A)).unwrap();
        let resp = answer(
            "www.a.test.",
            RecordType::A,
            vec![
                rec(
                    "www.a.test.",
                    300,
                    RData::CNAME(CNAME(Name::from_str("edge.cdn.test.").unwrap())),
                ),
                rec("edge.cdn.test.", 60, RData::A(A::new(198, 51, 100, 7))),
                rec(
                    "edge.cdn.test.",
                    60,
                    RData::AAAA(AAAA::from_str("2001:db8::7").unwrap()),
                ),
                // Injected: another name's address must not be allowed.
                rec("evil.test.", 60, RData::A(A::new(203, 0, 113, 9))),
            ],
        );
        let (_, ips, ttl) = addresses(&q, &resp).unwrap();
        assert_eq!(
            ips,
            vec![
                IpAddr::from([198, 51, 100, 7]),
                "2001:db8::7".parse().unwrap()
            ]
        );
        assert_eq!(ttl, 60);
    }

    #[test]
    fn refuses_answers_to_other_questions() {
        let (_, q) = question(&query("a.test.", RecordType::A)).unwrap();
        let other = answer(
            "b.test.",
            RecordType::A,
            vec![rec("b.test.", 60, RData::A(A::new(203, 0, 113, 9)))],
        );
        assert_eq!(addresses(&q, &other).unwrap_err(), MessageError::Mismatch);
        assert_eq!(
            addresses(&q, b"garbage").unwrap_err(),
            MessageError::Malformed
        );
    }

    #[test]
    fn a_cname_loop_ends() {
        let (_, q) = question(&query("a.test.", RecordType::A)).unwrap();
        let resp = answer(
            "a.test.",
            RecordType::A,
            vec![
                rec(
                    "a.test.",
                    60,
                    RData::CNAME(CNAME(Name::from_str("b.test.").unwrap())),
                ),
                rec(
                    "b.test.",
                    60,
                    RData::CNAME(CNAME(Name::from_str("a.test.").unwrap())),
                ),
            ],
        );
        assert!(addresses(&q, &resp).unwrap().1.is_empty());
    }

    #[test]
    fn refusal_keeps_the_question() {
        let (m, _) = question(&query("x.test.", RecordType::TXT)).unwrap();
        let r = Message::from_vec(&reply_code(&m, ResponseCode::Refused)).unwrap();
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(r.id(), 7);
        assert_eq!(r.queries().len(), 1);
    }
}
