//! The committed example config parses and matches the defaults it documents.

#[test]
fn example_config_parses_to_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let config: cairn_druid_proxy::Config = cairn_service::config::load_file(path).expect("example config loads");
    assert_eq!(config, cairn_druid_proxy::Config::default());
}
