//! Acceptor side of association negotiation (PS3.8 §7.1, §9.3.2–9.3.4): which associations
//! are accepted, which presentation contexts, with which transfer syntax.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::file_meta::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::pdu::{
    self, AssociateAc, AssociateRj, AssociateRq, PresentationContextAc, UserIdentityRq, UserInfo,
    APPLICATION_CONTEXT, MAX_CONTROL_PDU,
};
use crate::transfer_syntax;

pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// Most outstanding requests granted to a pipelining peer (PS3.7 §D.3.3.3). Requests are
/// served in arrival order whatever the window; the bound keeps the responses a peer may leave
/// unread (~200 bytes each) well inside the socket buffers, so answering never blocks on it.
const MAX_OPERATIONS_PERFORMED: u16 = 128;

/// A-ASSOCIATE-RJ result/source/reason codes (PS3.8 §9.3.4).
pub mod reject {
    pub const PERMANENT: u8 = 1;
    pub const TRANSIENT: u8 = 2;
    pub const SOURCE_USER: u8 = 1;
    pub const SOURCE_ACSE: u8 = 2;
    pub const SOURCE_PRESENTATION: u8 = 3;
    pub const NO_REASON: u8 = 1;
    pub const APPLICATION_CONTEXT_NOT_SUPPORTED: u8 = 2;
    pub const CALLING_AE_NOT_RECOGNIZED: u8 = 3;
    pub const CALLED_AE_NOT_RECOGNIZED: u8 = 7;
    pub const PROTOCOL_VERSION_NOT_SUPPORTED: u8 = 2;
    pub const LOCAL_LIMIT_EXCEEDED: u8 = 2;
}

/// Presentation context results in an A-ASSOCIATE-AC (PS3.8 §9.3.3.2).
pub mod context_result {
    pub const ACCEPTANCE: u8 = 0;
    pub const PROVIDER_REJECTION: u8 = 2;
    pub const ABSTRACT_SYNTAX_NOT_SUPPORTED: u8 = 3;
    pub const TRANSFER_SYNTAXES_NOT_SUPPORTED: u8 = 4;
}

/// What this node accepts.
#[derive(Debug, Clone)]
pub struct AcceptorPolicy {
    pub ae_title: String,
    pub require_called_ae: bool,
    /// Calling AE titles allowed in; empty allows any.
    pub allowed_calling_aes: Vec<String>,
    pub sop_classes: HashSet<String>,
    /// A user's preference order; `None` accepts the first supported syntax in the peer's order,
    /// usually its files' own encoding, so nothing needs converting.
    pub transfer_syntaxes: Option<Vec<String>>,
    /// Largest P-DATA-TF PDU we accept, advertised in our A-ASSOCIATE-AC.
    pub max_pdu: u32,
    /// Reject associations without a user identity sub-item (PS3.7 §D.3.3.7).
    pub require_user_identity: bool,
    /// Decides on the user identities peers present; None accepts any (they are recorded).
    pub identity_check: Option<Arc<dyn IdentityCheck>>,
}

/// User identity types of the A-ASSOCIATE-RQ sub-item (PS3.7 Table D.3-14).
pub mod identity_type {
    pub const USERNAME: u8 = 1;
    pub const USERNAME_AND_PASSCODE: u8 = 2;
    pub const KERBEROS: u8 = 3;
    pub const SAML: u8 = 4;
    pub const JWT: u8 = 5;
}

/// Longest server response we send: the user information item that carries it has a u16
/// length (PS3.8 §9.3.3.3), shared with the sub-item header and our other sub-items.
pub const MAX_SERVER_RESPONSE: usize = 65_000;

/// A user identity checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityVerdict {
    /// Accepted; the server response to send when the requestor asks for one (Kerberos, SAML
    /// and JWT; ignored for usernames, whose response is empty).
    Accept(Option<Vec<u8>>),
    /// Refused, and why in words (for the log; the peer hears only the A-ASSOCIATE-RJ).
    Reject(String),
}

/// Decides whether a requestor's user identity is accepted. `calling_ae` is the requestor's
/// AE title. Implementations bound their own wait: the association waits on the answer.
pub trait IdentityCheck: Send + Sync + fmt::Debug {
    fn check(&self, identity: &UserIdentityRq, calling_ae: &str) -> IdentityVerdict;
}

/// The identity in words for the association record: the username, or the kind of token
/// (never a passcode or the token itself).
pub fn identity_words(identity: &UserIdentityRq) -> String {
    match identity.identity_type {
        identity_type::USERNAME | identity_type::USERNAME_AND_PASSCODE => {
            let name: String = String::from_utf8_lossy(&identity.primary)
                .chars()
                .take(64)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            format!("user {name:?}")
        }
        identity_type::KERBEROS => "a Kerberos ticket".into(),
        identity_type::SAML => "a SAML assertion".into(),
        identity_type::JWT => "a JSON Web Token".into(),
        other => format!("user identity of unknown type {other}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedContext {
    pub abstract_syntax: String,
    pub transfer_syntax: String,
}

/// An established association: the peer and the presentation contexts it may use.
#[derive(Debug, Clone)]
pub struct Association {
    pub calling_ae: String,
    pub called_ae: String,
    /// Largest PDU the peer receives; 0 means no limit (PS3.8 §D.1).
    pub peer_max_pdu: u32,
    contexts: Vec<Option<AcceptedContext>>,
}

impl Association {
    pub fn context(&self, id: u8) -> Option<&AcceptedContext> {
        self.contexts.get(usize::from(id)).and_then(Option::as_ref)
    }
}

/// The answer to an A-ASSOCIATE-RQ: the association and its A-ASSOCIATE-AC, or a rejection.
pub type Negotiation = Result<(Association, AssociateAc), AssociateRj>;

fn rejection(result: u8, source: u8, reason: u8) -> Negotiation {
    Err(AssociateRj {
        result,
        source,
        reason,
    })
}

/// The A-ASSOCIATE-RJ for a node at its association limit.
pub fn busy() -> AssociateRj {
    AssociateRj {
        result: reject::TRANSIENT,
        source: reject::SOURCE_PRESENTATION,
        reason: reject::LOCAL_LIMIT_EXCEEDED,
    }
}

/// The A-ASSOCIATE-RJ for a refused user identity: permanent, from the service user, no reason
/// given (PS3.8 Table 9-21 has no reason closer to "not authorized").
pub fn identity_rejected() -> AssociateRj {
    AssociateRj {
        result: reject::PERMANENT,
        source: reject::SOURCE_USER,
        reason: reject::NO_REASON,
    }
}

impl AcceptorPolicy {
    /// Decide on the requestor's user identity (PS3.7 §D.3.3.7): the A-ASSOCIATE-AC's user
    /// identity sub-item value (Some only when a positive response was asked for and the
    /// identity accepted), or why the association is rejected.
    pub fn check_user_identity(
        &self,
        identity: Option<&UserIdentityRq>,
        calling_ae: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(identity) = identity else {
            return match self.require_user_identity {
                true => Err("no user identity, and one is required".into()),
                false => Ok(None),
            };
        };
        let verdict = match &self.identity_check {
            None => IdentityVerdict::Accept(None),
            Some(_) if !(1..=identity_type::JWT).contains(&identity.identity_type) => {
                IdentityVerdict::Reject(format!(
                    "user identity type {} is not defined",
                    identity.identity_type
                ))
            }
            Some(check) => check.check(identity, calling_ae),
        };
        let response = match verdict {
            IdentityVerdict::Reject(why) => return Err(why),
            IdentityVerdict::Accept(_) if !identity.positive_response_requested => return Ok(None),
            // Zero length for a username with or without passcode (PS3.7 Table D.3-15).
            IdentityVerdict::Accept(_)
                if identity.identity_type <= identity_type::USERNAME_AND_PASSCODE =>
            {
                Vec::new()
            }
            IdentityVerdict::Accept(response) => response.unwrap_or_default(),
        };
        if response.len() > MAX_SERVER_RESPONSE {
            return Err(format!(
                "the server response of {} bytes exceeds the {MAX_SERVER_RESPONSE} the \
                 A-ASSOCIATE-AC holds",
                response.len()
            ));
        }
        Ok(Some(response))
    }

    /// The largest P-DATA-TF PDU we read and announce. A configured 0 ("no limit", PS3.8
    /// §D.1) becomes the largest PDU we ever buffer, so what we announce is what we accept.
    pub fn receive_limit(&self) -> u32 {
        match self.max_pdu {
            0 => MAX_CONTROL_PDU,
            max => max,
        }
    }

    fn choose_transfer_syntax<'a>(&'a self, proposed: &'a [String]) -> Option<&'a str> {
        match &self.transfer_syntaxes {
            Some(preferred) => preferred
                .iter()
                .find(|ts| proposed.contains(ts))
                .map(String::as_str),
            None => proposed
                .iter()
                .map(String::as_str)
                .find(|ts| transfer_syntax::is_supported(ts)),
        }
    }

    /// Decide on an A-ASSOCIATE-RQ.
    pub fn negotiate(&self, rq: &AssociateRq) -> Negotiation {
        use reject::*;
        // Bit 0 of the protocol version is version 1, the only one defined (PS3.8 §9.3.2).
        if rq.protocol_version & 1 == 0 {
            return rejection(PERMANENT, SOURCE_ACSE, PROTOCOL_VERSION_NOT_SUPPORTED);
        }
        if rq.application_context != APPLICATION_CONTEXT {
            return rejection(PERMANENT, SOURCE_USER, APPLICATION_CONTEXT_NOT_SUPPORTED);
        }
        let Some(called_ae) = pdu::ae_title(&rq.called_ae) else {
            return rejection(PERMANENT, SOURCE_USER, CALLED_AE_NOT_RECOGNIZED);
        };
        if self.require_called_ae && called_ae != self.ae_title {
            return rejection(PERMANENT, SOURCE_USER, CALLED_AE_NOT_RECOGNIZED);
        }
        let Some(calling_ae) = pdu::ae_title(&rq.calling_ae) else {
            return rejection(PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED);
        };
        if !self.allowed_calling_aes.is_empty()
            && !self.allowed_calling_aes.iter().any(|a| a == calling_ae)
        {
            return rejection(PERMANENT, SOURCE_USER, CALLING_AE_NOT_RECOGNIZED);
        }
        if rq.presentation_contexts.is_empty() {
            return rejection(PERMANENT, SOURCE_USER, NO_REASON);
        }

        let mut contexts = vec![None; 256];
        let mut answers = Vec::with_capacity(rq.presentation_contexts.len());
        for pc in &rq.presentation_contexts {
            let id = usize::from(pc.id);
            let (result, ts) = if pc.id % 2 == 0 || answers_have(&answers, pc.id) {
                // Context ids are odd and unique (PS3.8 §9.3.2.2).
                (context_result::PROVIDER_REJECTION, "")
            } else if !self.sop_classes.contains(&pc.abstract_syntax) {
                (context_result::ABSTRACT_SYNTAX_NOT_SUPPORTED, "")
            } else if let Some(ts) = self.choose_transfer_syntax(&pc.transfer_syntaxes) {
                contexts[id] = Some(AcceptedContext {
                    abstract_syntax: pc.abstract_syntax.clone(),
                    transfer_syntax: ts.to_owned(),
                });
                (context_result::ACCEPTANCE, ts)
            } else {
                (context_result::TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
            };
            answers.push(PresentationContextAc {
                id: pc.id,
                result,
                transfer_syntax: ts.to_owned(),
            });
        }

        let ac = AssociateAc {
            protocol_version: 1,
            called_ae: rq.called_ae,
            calling_ae: rq.calling_ae,
            application_context: APPLICATION_CONTEXT.to_owned(),
            presentation_contexts: answers,
            user_info: UserInfo {
                max_length: Some(self.receive_limit()),
                implementation_class_uid: Some(IMPLEMENTATION_CLASS_UID.to_owned()),
                async_ops_window: rq.user_info.async_ops_window.map(grant_window),
                implementation_version_name: Some(IMPLEMENTATION_VERSION_NAME.to_owned()),
                ..UserInfo::default()
            },
        };
        let association = Association {
            calling_ae: calling_ae.to_owned(),
            called_ae: called_ae.to_owned(),
            peer_max_pdu: rq.user_info.max_length.unwrap_or(0),
            contexts,
        };
        Ok((association, ac))
    }
}

/// Our answer to a proposed asynchronous operations window (invoked, performed), both counted
/// as the requestor's operations and 0 meaning unlimited (PS3.7 §D.3.3.3): the peer may invoke
/// what it asked for up to our bound; we invoke nothing on it, so it performs one at a time.
fn grant_window((invoked, _performed): (u16, u16)) -> (u16, u16) {
    let invoked = match invoked {
        0 => MAX_OPERATIONS_PERFORMED,
        n => n.min(MAX_OPERATIONS_PERFORMED),
    };
    (invoked, 1)
}

fn answers_have(answers: &[PresentationContextAc], id: u8) -> bool {
    answers.iter().any(|a| a.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::{ae_field, PresentationContextRq};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn policy() -> AcceptorPolicy {
        AcceptorPolicy {
            ae_title: "INLET".into(),
            require_called_ae: false,
            allowed_calling_aes: vec![],
            sop_classes: [VERIFICATION_SOP_CLASS, CT]
                .into_iter()
                .map(String::from)
                .collect(),
            transfer_syntaxes: None,
            max_pdu: 262_144,
            require_user_identity: false,
            identity_check: None,
        }
    }

    fn context(id: u8, abstract_syntax: &str, ts: &[&str]) -> PresentationContextRq {
        PresentationContextRq {
            id,
            abstract_syntax: abstract_syntax.into(),
            transfer_syntaxes: ts.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn request(contexts: Vec<PresentationContextRq>) -> AssociateRq {
        AssociateRq {
            protocol_version: 1,
            called_ae: ae_field("INLET"),
            calling_ae: ae_field("SCU"),
            application_context: APPLICATION_CONTEXT.into(),
            presentation_contexts: contexts,
            user_info: UserInfo {
                max_length: Some(16384),
                ..UserInfo::default()
            },
        }
    }

    fn accept(policy: &AcceptorPolicy, rq: &AssociateRq) -> (Association, AssociateAc) {
        policy.negotiate(rq).expect("accepted")
    }

    fn rejected(policy: &AcceptorPolicy, rq: &AssociateRq) -> (u8, u8, u8) {
        let rj = policy.negotiate(rq).expect_err("rejected");
        (rj.result, rj.source, rj.reason)
    }

    #[test]
    fn contexts_get_per_context_results() {
        let rq = request(vec![
            context(1, CT, &["1.2.840.10008.1.2.2", "1.2.840.10008.1.2"]),
            context(3, "1.2.3.4.5.6", &["1.2.840.10008.1.2"]),
            context(5, CT, &["1.2.9.9"]),
            context(7, VERIFICATION_SOP_CLASS, &["1.2.840.10008.1.2"]),
            context(8, CT, &["1.2.840.10008.1.2"]),
            context(7, CT, &["1.2.840.10008.1.2"]),
        ]);
        let (association, ac) = accept(&policy(), &rq);
        let results: Vec<_> = ac
            .presentation_contexts
            .iter()
            .map(|c| (c.id, c.result))
            .collect();
        assert_eq!(results, [(1, 0), (3, 3), (5, 4), (7, 0), (8, 2), (7, 2)]);
        // The peer's first proposal wins: its files' own encoding, nothing converted.
        assert_eq!(
            ac.presentation_contexts[0].transfer_syntax,
            "1.2.840.10008.1.2.2"
        );
        assert_eq!(association.context(1).unwrap().abstract_syntax, CT);
        assert!(association.context(3).is_none());
        assert_eq!(
            association.context(7).unwrap().abstract_syntax,
            VERIFICATION_SOP_CLASS
        );
        assert_eq!(association.peer_max_pdu, 16384);
        assert_eq!(association.calling_ae, "SCU");
        assert_eq!(ac.user_info.max_length, Some(262_144));
    }

    #[test]
    fn unlimited_max_pdu_announces_what_we_read() {
        let policy = AcceptorPolicy {
            max_pdu: 0,
            ..policy()
        };
        let rq = request(vec![context(1, CT, &["1.2.840.10008.1.2"])]);
        let (_, ac) = accept(&policy, &rq);
        assert_eq!(ac.user_info.max_length, Some(MAX_CONTROL_PDU));
        assert_eq!(policy.receive_limit(), MAX_CONTROL_PDU);
    }

    #[test]
    fn asynchronous_window_is_granted_up_to_our_bound() {
        let mut rq = request(vec![context(1, CT, &["1.2.840.10008.1.2"])]);
        assert_eq!(accept(&policy(), &rq).1.user_info.async_ops_window, None);
        for (proposed, granted) in [
            ((16, 4), (16, 1)),
            ((1, 1), (1, 1)),
            ((0, 0), (MAX_OPERATIONS_PERFORMED, 1)),
            ((u16::MAX, 2), (MAX_OPERATIONS_PERFORMED, 1)),
        ] {
            rq.user_info.async_ops_window = Some(proposed);
            let (_, ac) = accept(&policy(), &rq);
            assert_eq!(ac.user_info.async_ops_window, Some(granted), "{proposed:?}");
        }
    }

    #[test]
    fn user_preference_overrides_peer_order() {
        let mut policy = policy();
        policy.transfer_syntaxes = Some(vec![
            "1.2.840.10008.1.2".into(),
            "1.2.840.10008.1.2.1".into(),
        ]);
        let rq = request(vec![
            context(1, CT, &["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]),
            context(3, CT, &["1.2.840.10008.1.2.2"]),
        ]);
        let (_, ac) = accept(&policy, &rq);
        assert_eq!(
            ac.presentation_contexts[0].transfer_syntax,
            "1.2.840.10008.1.2"
        );
        assert_eq!(
            ac.presentation_contexts[1].result,
            context_result::TRANSFER_SYNTAXES_NOT_SUPPORTED
        );
    }

    /// Answers every identity the same way.
    #[derive(Debug)]
    struct Fixed(IdentityVerdict);

    impl IdentityCheck for Fixed {
        fn check(&self, _: &UserIdentityRq, calling_ae: &str) -> IdentityVerdict {
            assert_eq!(calling_ae, "SCU");
            self.0.clone()
        }
    }

    fn identity(identity_type: u8, positive_response_requested: bool) -> UserIdentityRq {
        UserIdentityRq {
            identity_type,
            positive_response_requested,
            primary: b"alice".to_vec(),
            secondary: b"secret".to_vec(),
        }
    }

    fn checked(verdict: IdentityVerdict) -> AcceptorPolicy {
        AcceptorPolicy {
            identity_check: Some(Arc::new(Fixed(verdict))),
            ..policy()
        }
    }

    #[test]
    fn user_identity_is_required_only_when_asked() {
        assert_eq!(policy().check_user_identity(None, "SCU"), Ok(None));
        let strict = AcceptorPolicy {
            require_user_identity: true,
            ..policy()
        };
        let refused = strict.check_user_identity(None, "SCU").unwrap_err();
        assert!(refused.contains("one is required"), "{refused}");
        // Without a check any identity is accepted (PS3.15 §B.4 need not verify the passcode).
        let alice = identity(identity_type::USERNAME_AND_PASSCODE, false);
        assert_eq!(strict.check_user_identity(Some(&alice), "SCU"), Ok(None));
        let rj = identity_rejected();
        assert_eq!((rj.result, rj.source, rj.reason), (1, 1, 1));
    }

    #[test]
    fn server_response_only_when_requested_and_empty_for_usernames() {
        let token = Some(b"signed".to_vec());
        let accept = checked(IdentityVerdict::Accept(token.clone()));
        let ask = |t, requested| accept.check_user_identity(Some(&identity(t, requested)), "SCU");
        assert_eq!(ask(identity_type::JWT, false), Ok(None));
        assert_eq!(ask(identity_type::JWT, true), Ok(token));
        assert_eq!(ask(identity_type::USERNAME, true), Ok(Some(Vec::new())));
        assert_eq!(
            ask(identity_type::USERNAME_AND_PASSCODE, true),
            Ok(Some(Vec::new()))
        );
        let unknown = ask(9, true).unwrap_err();
        assert!(unknown.contains("type 9 is not defined"), "{unknown}");
        // Without a check, a username asked to be confirmed gets the empty response.
        let alice = identity(identity_type::USERNAME, true);
        assert_eq!(
            policy().check_user_identity(Some(&alice), "SCU"),
            Ok(Some(vec![]))
        );
    }

    #[test]
    fn refusals_and_oversized_responses_reject() {
        let no = checked(IdentityVerdict::Reject("wrong passcode".into()));
        let alice = identity(identity_type::USERNAME_AND_PASSCODE, false);
        assert_eq!(
            no.check_user_identity(Some(&alice), "SCU"),
            Err("wrong passcode".into())
        );
        let huge = checked(IdentityVerdict::Accept(Some(vec![
            0;
            MAX_SERVER_RESPONSE + 1
        ])));
        let jwt = identity(identity_type::JWT, true);
        assert!(huge.check_user_identity(Some(&jwt), "SCU").is_err());
        let fits = checked(IdentityVerdict::Accept(Some(vec![7; MAX_SERVER_RESPONSE])));
        let response = fits
            .check_user_identity(Some(&jwt), "SCU")
            .unwrap()
            .unwrap();
        // The largest response still encodes into an A-ASSOCIATE-AC that parses back.
        let (_, mut ac) = accept(
            &policy(),
            &request(vec![context(1, CT, &["1.2.840.10008.1.2"])]),
        );
        ac.user_info.user_identity_ac = Some(response.clone());
        let mut out = Vec::new();
        ac.encode(&mut out);
        let (pdu_type, _) = pdu::parse_header(out[..6].try_into().unwrap());
        let Ok(pdu::Pdu::AssociateAc(parsed)) = pdu::Pdu::parse(pdu_type, &out[6..]) else {
            panic!("the A-ASSOCIATE-AC does not parse");
        };
        assert_eq!(parsed.user_info.user_identity_ac, Some(response));
    }

    #[test]
    fn association_rejections() {
        let ok = request(vec![context(1, CT, &["1.2.840.10008.1.2"])]);
        let mut rq = ok.clone();
        rq.protocol_version = 2;
        assert_eq!(rejected(&policy(), &rq), (1, 2, 2));
        let mut rq = ok.clone();
        rq.application_context = "1.2.3".into();
        assert_eq!(rejected(&policy(), &rq), (1, 1, 2));
        let mut rq = ok.clone();
        rq.called_ae = [b' '; 16];
        assert_eq!(rejected(&policy(), &rq), (1, 1, 7));
        let mut strict = policy();
        strict.require_called_ae = true;
        let mut rq = ok.clone();
        rq.called_ae = ae_field("OTHER");
        assert_eq!(rejected(&strict, &rq), (1, 1, 7));
        accept(&strict, &ok);
        let mut listed = policy();
        listed.allowed_calling_aes = vec!["MODALITY".into()];
        assert_eq!(rejected(&listed, &ok), (1, 1, 3));
        let mut rq = ok.clone();
        rq.calling_ae = ae_field("MODALITY");
        accept(&listed, &rq);
        assert_eq!(rejected(&policy(), &request(vec![])), (1, 1, 1));
        let busy = busy();
        assert_eq!((busy.result, busy.source, busy.reason), (2, 3, 2));
    }
}
