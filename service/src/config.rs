//! Typed configuration loaded as defaults < file < prefixed environment,
//! with errors that name the key at fault.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config key `{key}` (env {env}): {reason}")]
    Invalid { key: &'static str, env: String, reason: String },
}

impl ConfigError {
    /// `key` is unusable; the message also names its environment variable.
    pub fn invalid(env_prefix: &str, key: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            env: format!("{env_prefix}_{}", key.to_uppercase()),
            reason: reason.into(),
        }
    }
}

/// Where one service's settings come from.
pub struct Layers<'a> {
    /// Environment variables are `<env_prefix>_<KEY>`.
    pub env_prefix: &'a str,
    /// The variable that names the config file: read by the binary, and
    /// not a key (so it is not refused as unknown).
    pub file_env: &'a str,
    /// Keys whose environment value is a comma-separated list.
    pub list_keys: &'a [&'a str],
}

impl Layers<'_> {
    /// Deserialises `T` (which supplies the defaults through
    /// `#[serde(default)]`) from `file`, then `env` on top.
    pub fn load<T: DeserializeOwned>(
        &self,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<T, ConfigError> {
        let vars: HashMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with(self.env_prefix) && k != self.file_env).collect();
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let mut environment = config::Environment::with_prefix(self.env_prefix)
            .prefix_separator("_")
            .try_parsing(true)
            .source(Some(vars.into_iter().collect()));
        if !self.list_keys.is_empty() {
            environment = environment.list_separator(",");
            for key in self.list_keys {
                environment = environment.with_list_parse_key(key);
            }
        }
        Ok(builder.add_source(environment).build()?.try_deserialize()?)
    }
}
