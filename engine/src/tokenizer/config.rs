//! MidiTok's `tokenizer.json`, read into the REMI options this engine implements.
//!
//! MidiTok does not store the vocabulary: it rebuilds it from the configuration. So does this
//! module, in MidiTok's order, which is why map order in the JSON matters (`beat_res` and
//! `time_signature_range` are read in file order).

use serde_json::{Map, Value};

use super::vocab::{DurationValue, Special};
use crate::time::TimeSignature;

/// What makes a `tokenizer.json` unusable here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("tokenization `{0}` is not supported (only REMI)")]
    NotRemi(String),
    #[error("the tokenizer was trained (BPE/Unigram/WordPiece model present); only plain REMI is supported")]
    Trained,
    #[error("missing `{0}`")]
    Missing(&'static str),
    #[error("`{key}` is invalid: {why}")]
    Invalid { key: String, why: String },
    #[error("option `{key}` = {value} is not supported by this engine")]
    Unsupported { key: String, value: String },
    #[error("unknown option `{0}`")]
    Unknown(String),
}

/// The REMI options that shape the vocabulary and the encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct RemiConfig {
    /// Inclusive MIDI key range.
    pub pitch_range: (u8, u8),
    /// `(first beat, end beat, positions per beat)` in file order.
    pub beat_res: Vec<(u8, u8, u8)>,
    pub num_velocities: u8,
    pub special_tokens: Vec<Special>,
    /// Supported meters in MidiTok's order.
    pub time_signatures: Vec<TimeSignature>,
}

/// Options that must hold one value: each names a MidiTok feature this engine does not
/// implement (or implements only in this setting).
fn required_values() -> Vec<(&'static str, Value)> {
    let f = Value::Bool(false);
    let t = Value::Bool(true);
    let mut v = Vec::new();
    for key in [
        "remove_duplicated_notes",
        "use_chords",
        "use_rests",
        "use_tempos",
        "use_key_signatures",
        "use_sustain_pedals",
        "use_pitch_bends",
        "use_control_changes",
        "use_programs",
        "use_pitch_intervals",
        "one_token_stream_for_programs",
        "program_changes",
        "ac_polyphony_track",
        "ac_polyphony_bar",
        "ac_pitch_class_bar",
        "ac_note_density_track",
        "ac_note_density_bar",
        "ac_note_duration_bar",
        "ac_note_duration_track",
        "ac_repetition_track",
    ] {
        v.push((key, f.clone()));
    }
    v.push(("use_velocities", t.clone()));
    v.push(("use_time_signatures", t));
    v
}

/// Options whose value does not matter while the features above are off.
const IGNORED: &[&str] = &[
    "encode_ids_split",
    "use_pitchdrum_tokens",
    "default_note_duration",
    "programs",
    "beat_res_rest",
    "chord_maps",
    "chord_tokens_with_root_note",
    "chord_unknown",
    "num_tempos",
    "tempo_range",
    "log_tempos",
    "delete_equal_successive_tempo_changes",
    "delete_equal_successive_time_sig_changes",
    "sustain_pedal_duration",
    "pitch_bend_range",
    "max_pitch_interval",
    "pitch_intervals_max_time_dist",
    "drums_pitch_range",
    "control_change_numbers",
    "control_change_n_bins",
    "ac_polyphony_min",
    "ac_polyphony_max",
    "ac_note_density_track_min",
    "ac_note_density_track_max",
    "ac_note_density_bar_max",
    "ac_repetition_track_num_bins",
    "ac_repetition_track_num_consec_bars",
];

impl RemiConfig {
    /// Reads MidiTok's saved tokenizer (the whole `tokenizer.json` document).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let root = root
            .as_object()
            .ok_or_else(|| invalid("(document)", "not a JSON object"))?;
        match root.get("tokenization").and_then(Value::as_str) {
            Some("REMI") => {}
            Some(other) => return Err(ConfigError::NotRemi(other.to_string())),
            None => return Err(ConfigError::Missing("tokenization")),
        }
        if root.contains_key("_model") || root.contains_key("_vocab_base_byte_to_token") {
            return Err(ConfigError::Trained);
        }
        let config = root
            .get("config")
            .and_then(Value::as_object)
            .ok_or(ConfigError::Missing("config"))?;
        Self::from_config(config)
    }

    fn from_config(config: &Map<String, Value>) -> Result<Self, ConfigError> {
        let required = required_values();
        for (key, value) in config {
            if let Some((_, want)) = required.iter().find(|(k, _)| k == key) {
                if value != want {
                    return Err(ConfigError::Unsupported {
                        key: key.clone(),
                        value: value.to_string(),
                    });
                }
            } else if !IGNORED.contains(&key.as_str())
                && ![
                    "pitch_range",
                    "beat_res",
                    "num_velocities",
                    "special_tokens",
                    "time_signature_range",
                    "use_note_duration_programs",
                    "additional_params",
                ]
                .contains(&key.as_str())
            {
                return Err(ConfigError::Unknown(key.clone()));
            }
        }
        for (key, want) in &required {
            if let Some(true) = want.as_bool() {
                if config.get(*key) != Some(want) {
                    return Err(ConfigError::Missing(key));
                }
            }
        }
        check_additional_params(config.get("additional_params"))?;
        check_duration_programs(config.get("use_note_duration_programs"))?;

        let pitch_range = parse_pitch_range(
            config
                .get("pitch_range")
                .ok_or(ConfigError::Missing("pitch_range"))?,
        )?;
        let beat_res = parse_beat_res(
            config
                .get("beat_res")
                .ok_or(ConfigError::Missing("beat_res"))?,
        )?;
        let num_velocities = config
            .get("num_velocities")
            .and_then(Value::as_u64)
            .ok_or(ConfigError::Missing("num_velocities"))?;
        if !(1..=127).contains(&num_velocities) {
            return Err(invalid("num_velocities", "must be within 1..=127"));
        }
        let special_tokens = parse_special_tokens(config.get("special_tokens"))?;
        let time_signatures = parse_time_signatures(
            config
                .get("time_signature_range")
                .ok_or(ConfigError::Missing("time_signature_range"))?,
        )?;
        Ok(RemiConfig {
            pitch_range,
            beat_res,
            num_velocities: num_velocities as u8,
            special_tokens,
            time_signatures,
        })
    }

    /// Grid steps per beat at the finest resolution (MidiTok's `max_num_pos_per_beat`).
    pub fn max_positions_per_beat(&self) -> u8 {
        self.beat_res.iter().map(|r| r.2).max().unwrap_or(1)
    }

    /// The velocity bins: MidiTok's `linspace(0, 127, n + 1)[1:]`, truncated to integers.
    pub fn velocities(&self) -> Vec<u8> {
        let n = usize::from(self.num_velocities);
        let step = 127.0 / n as f64;
        (1..=n).map(|i| (i as f64 * step) as u8).collect()
    }

    /// The duration values in vocabulary order.
    pub fn durations(&self) -> Vec<DurationValue> {
        let mut out = Vec::new();
        for &(start, end, res) in &self.beat_res {
            for beats in start..end {
                for positions in 0..res {
                    out.push(DurationValue {
                        beats,
                        positions,
                        resolution: res,
                    });
                }
            }
        }
        // MidiTok appends one duration of exactly the largest range's end, and drops 0.
        let last = self.beat_res.iter().max_by_key(|r| (r.0, r.1)).copied();
        if let Some((_, end, res)) = last {
            out.push(DurationValue {
                beats: end,
                positions: 0,
                resolution: res,
            });
        }
        if !out.is_empty() {
            out.remove(0);
        }
        out
    }

    /// Largest denominator of the supported meters.
    pub fn max_denominator(&self) -> u8 {
        self.time_signatures
            .iter()
            .map(|t| t.denominator())
            .max()
            .unwrap_or(4)
    }

    /// Number of `Position` tokens: the longest supported bar, in grid steps.
    pub fn num_positions(&self) -> u16 {
        let max_beats = self
            .time_signatures
            .iter()
            .map(|t| t.numerator())
            .max()
            .unwrap_or(4);
        u16::from(self.max_positions_per_beat()) * u16::from(max_beats)
    }

    /// MidiTok's ticks per beat for a denominator, at the tokenizer's own resolution.
    pub fn ticks_per_beat_for(&self, denominator: u8) -> u64 {
        u64::from(self.max_positions_per_beat())
            * u64::from((self.max_denominator() / denominator).max(1))
    }
}

fn invalid(key: &str, why: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        why: why.to_string(),
    }
}

fn parse_pitch_range(v: &Value) -> Result<(u8, u8), ConfigError> {
    let arr = v
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| invalid("pitch_range", "expected [low, high]"))?;
    let lo = arr[0]
        .as_u64()
        .ok_or_else(|| invalid("pitch_range", "low is not an integer"))?;
    let hi = arr[1]
        .as_u64()
        .ok_or_else(|| invalid("pitch_range", "high is not an integer"))?;
    if lo > hi || hi > 127 {
        return Err(invalid("pitch_range", "needs 0 <= low <= high <= 127"));
    }
    Ok((lo as u8, hi as u8))
}

fn parse_beat_res(v: &Value) -> Result<Vec<(u8, u8, u8)>, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| invalid("beat_res", "expected an object"))?;
    let mut out = Vec::new();
    for (range, res) in map {
        let (a, b) = range
            .split_once('_')
            .and_then(|(a, b)| Some((a.parse::<u8>().ok()?, b.parse::<u8>().ok()?)))
            .ok_or_else(|| invalid("beat_res", &format!("key `{range}` is not `start_end`")))?;
        let res = res
            .as_u64()
            .filter(|r| (1..=64).contains(r))
            .ok_or_else(|| {
                invalid(
                    "beat_res",
                    &format!("resolution of `{range}` must be 1..=64"),
                )
            })?;
        if a >= b {
            return Err(invalid("beat_res", &format!("range `{range}` is empty")));
        }
        out.push((a, b, res as u8));
    }
    if out.is_empty() {
        return Err(invalid("beat_res", "no ranges"));
    }
    let max = out.iter().map(|r| r.2).max().unwrap_or(1);
    if out.iter().any(|r| max % r.2 != 0) {
        return Err(invalid(
            "beat_res",
            "every resolution must divide the finest one",
        ));
    }
    Ok(out)
}

fn parse_special_tokens(v: Option<&Value>) -> Result<Vec<Special>, ConfigError> {
    let arr = v
        .and_then(Value::as_array)
        .ok_or(ConfigError::Missing("special_tokens"))?;
    let mut out = Vec::new();
    for item in arr {
        let s = item
            .as_str()
            .ok_or_else(|| invalid("special_tokens", "entries must be strings"))?;
        let name = s.strip_suffix("_None").unwrap_or(s);
        let special = Special::from_name(name).ok_or_else(|| ConfigError::Unsupported {
            key: "special_tokens".into(),
            value: format!("\"{s}\""),
        })?;
        out.push(special);
    }
    for needed in [Special::Pad, Special::Bos, Special::Eos] {
        if !out.contains(&needed) {
            return Err(invalid("special_tokens", "PAD, BOS and EOS are required"));
        }
    }
    Ok(out)
}

fn parse_time_signatures(v: &Value) -> Result<Vec<TimeSignature>, ConfigError> {
    let map = v
        .as_object()
        .ok_or_else(|| invalid("time_signature_range", "expected an object"))?;
    let mut out = Vec::new();
    for (denominator, numerators) in map {
        let d: u8 = denominator
            .parse()
            .ok()
            .filter(|d: &u8| d.is_power_of_two() && *d <= 64)
            .ok_or_else(|| {
                invalid(
                    "time_signature_range",
                    &format!("denominator `{denominator}` is not a power of two"),
                )
            })?;
        let nums = numerators
            .as_array()
            .ok_or_else(|| invalid("time_signature_range", "numerators must be a list"))?;
        for n in nums {
            let n = n.as_u64().filter(|n| (1..=64).contains(n)).ok_or_else(|| {
                invalid("time_signature_range", "numerators must be integers 1..=64")
            })?;
            out.push(TimeSignature::new(n as u8, d).expect("validated above"));
        }
    }
    if out.is_empty() {
        return Err(invalid("time_signature_range", "no time signatures"));
    }
    Ok(out)
}

fn check_additional_params(v: Option<&Value>) -> Result<(), ConfigError> {
    let Some(map) = v.and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, value) in map {
        let ok = match key.as_str() {
            "max_bar_embedding" => value.is_null(),
            "use_bar_end_tokens" | "add_trailing_bars" => value == &Value::Bool(false),
            _ => false,
        };
        if !ok {
            return Err(ConfigError::Unsupported {
                key: format!("additional_params.{key}"),
                value: value.to_string(),
            });
        }
    }
    Ok(())
}

fn check_duration_programs(v: Option<&Value>) -> Result<(), ConfigError> {
    let Some(arr) = v.and_then(Value::as_array) else {
        return Err(ConfigError::Missing("use_note_duration_programs"));
    };
    let has = |p: i64| arr.iter().any(|x| x.as_i64() == Some(p));
    if (0..128).all(has) {
        Ok(())
    } else {
        Err(ConfigError::Unsupported {
            key: "use_note_duration_programs".into(),
            value: "(not every program 0..=127)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../data/miditok_remi.json");

    #[test]
    fn reference_config_reads() {
        let c = RemiConfig::from_json(REFERENCE).unwrap();
        assert_eq!(c.pitch_range, (21, 108));
        assert_eq!(c.beat_res, vec![(0, 4, 12), (4, 12, 6)]);
        assert_eq!(c.durations().len(), 96);
        assert_eq!(c.velocities().len(), 32);
        assert_eq!(c.velocities()[0], 3);
        assert_eq!(c.num_positions(), 144);
        assert_eq!(c.time_signatures.len(), 9);
        assert_eq!(c.time_signatures[0].to_string(), "3/8");
        assert_eq!(c.ticks_per_beat_for(4), 24);
        assert_eq!(c.ticks_per_beat_for(8), 12);
    }

    fn with(key: &str, value: Value) -> String {
        let mut root: Value = serde_json::from_str(REFERENCE).unwrap();
        root["config"][key] = value;
        root.to_string()
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let err = RemiConfig::from_json(&with("use_chords", Value::Bool(true))).unwrap_err();
        assert!(err.to_string().contains("use_chords"), "{err}");
        let err =
            RemiConfig::from_json(&with("use_time_signatures", Value::Bool(false))).unwrap_err();
        assert!(err.to_string().contains("use_time_signatures"), "{err}");
        let err = RemiConfig::from_json(&with("made_up_option", Value::Bool(false))).unwrap_err();
        assert_eq!(err, ConfigError::Unknown("made_up_option".into()));
        let mut root: Value = serde_json::from_str(REFERENCE).unwrap();
        root["tokenization"] = "TSD".into();
        assert_eq!(
            RemiConfig::from_json(&root.to_string()).unwrap_err(),
            ConfigError::NotRemi("TSD".into())
        );
        assert!(matches!(
            RemiConfig::from_json("{"),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn other_values_of_supported_options_work() {
        let c = RemiConfig::from_json(&with("num_velocities", 16.into())).unwrap();
        assert_eq!(c.velocities().len(), 16);
        let c = RemiConfig::from_json(&with("pitch_range", serde_json::json!([40, 90]))).unwrap();
        assert_eq!(c.pitch_range, (40, 90));
    }
}
