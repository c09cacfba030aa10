//! `meshd analyze` end to end on real Istio YAML and broken YAML.
