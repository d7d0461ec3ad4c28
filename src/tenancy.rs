//! Tenants and test traffic sharing a topic with production: a header (W3C
//! `baggage` by default) names the tenant; per tenant the config either
//! drops its records (counted) or writes them under a prefix of their own.
//! Records without a configured tenant go the normal way.

use crate::config::TenantsConfig;

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The sink's own prefix.
    Main,
    /// Counted, not written.
    Drop,
    /// Under the prefix of tenant `n` (index into [`Tenancy::prefixes`]).
    Prefix(u8),
}

#[derive(Debug, Clone, Default)]
pub struct Tenancy {
    header: String,
    key: String,
    drop: Vec<String>,
    /// (tenant, prefix) pairs.
    prefixes: Vec<(String, String)>,
}

impl Tenancy {
    pub fn new(config: &TenantsConfig) -> Tenancy {
        Tenancy {
            header: config.header.clone(),
            key: config.key.clone(),
            drop: config.drop.clone(),
            prefixes: config
                .prefixes
                .iter()
                .take(u8::MAX as usize)
                .map(|(t, p)| (t.clone(), p.trim_matches('/').to_owned()))
                .collect(),
        }
    }

    /// The header that names the tenant.
    pub fn header(&self) -> &str {
        &self.header
    }

    pub fn is_active(&self) -> bool {
        !self.drop.is_empty() || !self.prefixes.is_empty()
    }

    /// (tenant, prefix) of a [`Route::Prefix`].
    pub fn prefix(&self, index: u8) -> Option<&(String, String)> {
        self.prefixes.get(index as usize)
    }

    /// The tenant named by the header's value, if any.
    fn tenant<'a>(&self, value: &'a str) -> Option<&'a str> {
        if !self.header.eq_ignore_ascii_case("baggage") {
            return Some(value.trim()).filter(|t| !t.is_empty());
        }
        // W3C baggage: `key=value;property, key2=value2`.
        value.split(',').find_map(|member| {
            let pair = member.split(';').next()?;
            let (k, v) = pair.split_once('=')?;
            (k.trim() == self.key).then(|| v.trim())
        })
    }

    /// Where a record whose tenant header holds `value` goes.
    pub fn route<'a>(&self, value: Option<&'a str>) -> (Route, Option<&'a str>) {
        let Some(tenant) = value.and_then(|v| self.tenant(v)) else {
            return (Route::Main, None);
        };
        if self.drop.iter().any(|d| d == tenant) {
            return (Route::Drop, Some(tenant));
        }
        match self.prefixes.iter().position(|(t, _)| t == tenant) {
            Some(i) => (Route::Prefix(i as u8), Some(tenant)),
            None => (Route::Main, Some(tenant)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn tenancy(header: &str) -> Tenancy {
        Tenancy::new(&TenantsConfig {
            header: header.into(),
            key: "tenant".into(),
            drop: vec!["loadtest".into()],
            prefixes: BTreeMap::from([("test".to_owned(), "test-raw/".to_owned())]),
        })
    }

    #[test]
    fn baggage_members_route_records() {
        let t = tenancy("baggage");
        assert_eq!(t.route(None), (Route::Main, None));
        assert_eq!(
            t.route(Some("userId=1, tenant=test;ttl=3")),
            (Route::Prefix(0), Some("test"))
        );
        assert_eq!(
            t.route(Some("tenant=loadtest")),
            (Route::Drop, Some("loadtest"))
        );
        assert_eq!(t.route(Some("tenant=acme")), (Route::Main, Some("acme")));
        assert_eq!(t.route(Some("other=test")), (Route::Main, None));
        assert_eq!(
            t.prefix(0),
            Some(&("test".to_owned(), "test-raw".to_owned()))
        );
    }

    #[test]
    fn a_plain_header_names_the_tenant_itself() {
        let t = tenancy("x-tenant");
        assert_eq!(t.route(Some(" test ")), (Route::Prefix(0), Some("test")));
    }
}
