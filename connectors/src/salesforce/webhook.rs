//! Outbound Messages: Salesforce's SOAP webhook. Each message carries up to 100 notifications with the
//! selected fields' current values; crmsync answers the SOAP acknowledgement, or Salesforce retries.
//! Reference: developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_notifications.htm
//!
//! Outbound Messages carry no signature. crmsync checks the organization id of every message and a
//! shared secret that the endpoint URL configured in Salesforce carries as `?secret=…`
//! (e.g. `https://crmsync.example.com/webhooks/sf_prod?secret=…`), compared in constant time.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;
use secrecy::ExposeSecret;

use super::config::SalesforceWebhook;
use super::wire;
use crate::canonical::Entity;
use crate::connector::same_secret;
use crate::error::WebhookError;

/// The SOAP acknowledgement Salesforce expects.
pub const ACK: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>"#,
    r#"<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse>"#,
    r#"</soapenv:Body></soapenv:Envelope>"#
);

/// One notification: the object, its fields (Id included) as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Notification id (Salesforce's dedupe key).
    pub id: String,
    /// sObject type (`Opportunity`).
    pub object: String,
    /// Field values.
    pub fields: BTreeMap<String, Option<String>>,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Sending org.
    pub organization_id: String,
    /// Notifications.
    pub notifications: Vec<Notification>,
}

/// Checks the shared secret in the query string.
pub fn authenticate(config: &SalesforceWebhook, query: Option<&str>) -> Result<(), WebhookError> {
    let presented = query
        .map(|query| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(key, _)| key == "secret")
                .map(|(_, value)| value.into_owned())
        })
        .unwrap_or_default()
        .unwrap_or_default();
    if same_secret(&presented, config.secret.expose_secret()) {
        Ok(())
    } else {
        Err(WebhookError::Unauthenticated("missing or wrong secret in the endpoint URL".into()))
    }
}

/// Compares org ids, accepting the 15- and 18-character forms of the same id. The id comes from
/// the message body, so it is compared by checked slicing: a non-ASCII id (where byte 15 is not a
/// character boundary) is simply not our org, never a panic.
pub fn same_org(left: &str, right: &str) -> bool {
    match (left.get(..15), right.get(..15)) {
        (Some(left), Some(right)) => left == right,
        _ => false,
    }
}

/// Parses an Outbound Message.
pub fn parse(body: &[u8]) -> Result<OutboundMessage, WebhookError> {
    let text = std::str::from_utf8(body).map_err(|_| WebhookError::Malformed("body is not UTF-8".into()))?;
    let mut reader = Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut organization_id = None;
    let mut notifications = Vec::new();
    let mut current: Option<Notification> = None;
    let mut value = String::new();
    loop {
        let event = reader.read_event().map_err(|error| WebhookError::Malformed(format!("invalid XML: {error}")))?;
        match event {
            Event::Start(element) => {
                let name = element.local_name().as_ref().to_owned();
                if name == "Notification" {
                    current = Some(Notification { id: String::new(), object: String::new(), fields: BTreeMap::new() });
                }
                if name == "sObject"
                    && let Some(notification) = current.as_mut()
                {
                    for attribute in element.attributes().flatten() {
                        if attribute.key.local_name().as_ref() == "type" {
                            let kind = attribute.value.to_string();
                            notification.object = kind.rsplit(':').next().unwrap_or(&kind).to_owned();
                        }
                    }
                }
                path.push(name);
                value.clear();
            }
            Event::Empty(element) => {
                let name = element.local_name().as_ref().to_owned();
                if path.last().is_some_and(|parent| parent == "sObject")
                    && let Some(notification) = current.as_mut()
                {
                    notification.fields.insert(name, None);
                }
            }
            Event::Text(content) => value.push_str(&content.xml10_content()),
            Event::CData(content) => value.push_str(&content),
            Event::GeneralRef(reference) => {
                let name: String = reference.to_string();
                match reference.resolve_char_ref() {
                    Ok(Some(character)) => value.push(character),
                    _ => match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(resolved) => value.push_str(resolved),
                        None => return Err(WebhookError::Malformed(format!("unknown entity &{name};"))),
                    },
                }
            }
            Event::End(_) => {
                let Some(name) = path.pop() else { return Err(WebhookError::Malformed("unbalanced XML".into())) };
                let parent = path.last().map(String::as_str);
                match (parent, name.as_str()) {
                    (Some("notifications"), "OrganizationId") => organization_id = Some(value.trim().to_owned()),
                    (Some("Notification"), "Id") => {
                        if let Some(notification) = current.as_mut() {
                            notification.id = value.trim().to_owned();
                        }
                    }
                    (Some("sObject"), field) => {
                        if let Some(notification) = current.as_mut() {
                            notification.fields.insert(field.to_owned(), Some(value.clone()));
                        }
                    }
                    (_, "Notification") => {
                        if let Some(notification) = current.take() {
                            notifications.push(notification);
                        }
                    }
                    _ => {}
                }
                value.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let organization_id =
        organization_id.ok_or_else(|| WebhookError::Malformed("no OrganizationId: not an Outbound Message".into()))?;
    Ok(OutboundMessage { organization_id, notifications })
}

/// Returns the entity of an sObject type crmsync syncs.
pub fn entity_of(object: &str) -> Option<Entity> {
    wire::OBJECTS.iter().find(|(_, name, _)| *name == object).map(|(entity, _, _)| *entity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D000000000001AAA</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://x.my.salesforce.com/services/Soap/c/62.0/00D</EnterpriseUrl>
   <PartnerUrl>https://x.my.salesforce.com/services/Soap/u/62.0/00D</PartnerUrl>
   <Notification>
    <Id>04l000000000001AAA</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>006000000000001AAA</sf:Id>
     <sf:StageName>Closed Won</sf:StageName>
     <sf:Name>Big &amp; bold</sf:Name>
     <sf:Amount xsi:nil="true"/>
    </sObject>
   </Notification>
   <Notification>
    <Id>04l000000000002AAA</Id>
    <sObject xsi:type="sf:Account" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>001000000000001AAA</sf:Id>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#;

    #[test]
    fn outbound_messages_parse_with_entities_and_nils() {
        let message = parse(MESSAGE.as_bytes()).unwrap();
        assert_eq!(message.organization_id, "00D000000000001AAA");
        assert_eq!(message.notifications.len(), 2);
        let first = &message.notifications[0];
        assert_eq!(first.object, "Opportunity");
        assert_eq!(first.fields["StageName"].as_deref(), Some("Closed Won"));
        assert_eq!(first.fields["Name"].as_deref(), Some("Big & bold"));
        assert_eq!(first.fields["Amount"], None);
        assert_eq!(message.notifications[1].fields.len(), 1, "ids-only notification");
    }

    #[test]
    fn garbage_is_malformed_and_org_ids_compare_by_prefix() {
        assert!(matches!(parse(b"<a><b></a>"), Err(WebhookError::Malformed(_))));
        assert!(matches!(parse(b"{}"), Err(WebhookError::Malformed(_))));
        assert!(same_org("00D000000000001", "00D000000000001AAA"));
        assert!(!same_org("00D000000000002AAA", "00D000000000001AAA"));
    }

    #[test]
    fn a_non_ascii_organization_id_is_refused_not_a_panic() {
        // "é" is two bytes: byte 15 falls inside it, where `&id[..15]` would panic.
        for id in ["00D00000000000é1AAA", "ééééééééééééééééé", "00D0000000000é", "日本語の組織"]
        {
            assert!(!same_org(id, "00D000000000001AAA"), "{id}");
            assert!(!same_org("00D000000000001AAA", id), "{id}");
        }
        let body = MESSAGE.replace("<OrganizationId>00D000000000001AAA", "<OrganizationId>00D00000000000é1AAA");
        let message = parse(body.as_bytes()).unwrap();
        assert!(!same_org(&message.organization_id, "00D000000000001AAA"));
    }
}
