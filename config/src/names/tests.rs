//! Name rules, as properties over generated names.

use proptest::prelude::*;

use super::*;

proptest! {
    #[test]
    fn valid_service_connect_names_are_accepted(name in "[a-z0-9_][a-z0-9_-]{0,63}") {
        prop_assert_eq!(PortName::parse(&name).map(|n| n.to_string()), Ok(name.clone()));
        prop_assert!(DiscoveryName::parse(&name).is_ok());
        prop_assert!(DnsName::parse(&name).is_ok());
    }

    #[test]
    fn names_over_64_characters_are_refused(name in "[a-z0-9_][a-z0-9_-]{64,100}") {
        let e = PortName::parse(&name).unwrap_err();
        prop_assert!(e.contains("at most 64"), "{}", e);
    }

    #[test]
    fn a_leading_hyphen_is_refused(rest in "[a-z0-9_-]{0,63}") {
        let name = format!("-{rest}");
        prop_assert!(PortName::parse(&name).unwrap_err().contains("must not start with '-'"));
        prop_assert!(DnsName::parse(&name).is_err());
    }

    #[test]
    fn uppercase_is_refused_with_a_lowercase_hint(name in "[a-z0-9_]{0,10}[A-Z][a-zA-Z0-9_-]{0,10}") {
        prop_assert_eq!(PortName::parse(&name).unwrap_err(), format!("{name:?} must be lowercase"));
    }

    #[test]
    fn any_other_character_is_refused(prefix in "[a-z]{0,5}", bad in "[^a-zA-Z0-9_-]", suffix in "[a-z]{0,5}") {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(PortName::parse(&name).is_err());
    }

    #[test]
    fn dns_names_also_take_dots(labels in prop::collection::vec("[a-z0-9][a-z0-9-]{0,10}", 1..5)) {
        let name = labels.join(".");
        prop_assert!(DnsName::parse(&name).is_ok());
        prop_assert_eq!(PortName::parse(&name).is_ok(), labels.len() == 1);
    }

    #[test]
    fn resource_names_take_letters_digits_underscore_hyphen(name in "[A-Za-z0-9_-]{1,255}") {
        prop_assert!(check_resource_name(&name).is_ok());
    }
}

#[test]
fn edge_cases() {
    assert_eq!(PortName::parse("").unwrap_err(), "must not be empty");
    assert!(PortName::parse(&"a".repeat(64)).is_ok());
    assert!(DnsName::parse(&"a".repeat(127)).is_ok());
    assert!(DnsName::parse(&"a".repeat(128)).is_err());
    assert!(check_resource_name(&"a".repeat(256)).is_err());
    assert!(check_resource_name("a.b").is_err());
    assert_eq!(
        DiscoveryName::from(PortName::parse("http").unwrap()).as_str(),
        "http"
    );
}
