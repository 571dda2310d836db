//! The Continuator Instrument's preview tone: a soft sine per sounding note, so a track hosting
//! the instrument is audible without routing its MIDI to another instrument. Fixed voices, no
//! allocation: it runs on the audio thread.

/// Voices sounding at once; a note beyond them takes the oldest voice.
const VOICES: usize = 16;
/// Per-voice gain at full velocity: sixteen voices together stay below full scale.
const GAIN: f32 = 0.06;
/// Release time constant, in seconds: long enough not to click, short enough to stay a preview.
const RELEASE_SECONDS: f32 = 0.05;

#[derive(Debug, Clone, Copy, Default)]
struct Voice {
    key: u8,
    /// 0 when free.
    level: f32,
    phase: f32,
    step: f32,
    held: bool,
    age: u32,
}

#[derive(Debug)]
pub struct Preview {
    voices: [Voice; VOICES],
    sample_rate: f32,
    release: f32,
    clock: u32,
}

impl Default for Preview {
    fn default() -> Self {
        let mut preview = Preview {
            voices: [Voice::default(); VOICES],
            sample_rate: 48_000.0,
            release: 0.0,
            clock: 0,
        };
        preview.set_sample_rate(48_000.0);
        preview
    }
}

impl Preview {
    pub fn set_sample_rate(&mut self, sample_rate: f32) {
        self.sample_rate = sample_rate.max(1.0);
        self.release = (-1.0 / (RELEASE_SECONDS * self.sample_rate)).exp();
    }

    pub fn note_on(&mut self, key: u8, velocity: f32) {
        self.clock = self.clock.wrapping_add(1);
        let index = self
            .voices
            .iter()
            .position(|v| v.level <= 0.0)
            .unwrap_or_else(|| (0..VOICES).min_by_key(|&i| self.voices[i].age).unwrap_or(0));
        let frequency = 440.0 * 2f32.powf((f32::from(key) - 69.0) / 12.0);
        self.voices[index] = Voice {
            key,
            level: GAIN * velocity.clamp(0.0, 1.0),
            phase: 0.0,
            step: frequency / self.sample_rate,
            held: true,
            age: self.clock,
        };
    }

    pub fn note_off(&mut self, key: u8) {
        for voice in self.voices.iter_mut().filter(|v| v.key == key && v.held) {
            voice.held = false;
        }
    }

    /// Silences everything at once (the preview was switched off, or the transport moved).
    pub fn all_off(&mut self) {
        self.voices = [Voice::default(); VOICES];
    }

    /// Adds the sounding voices to `out` (one sample per element).
    pub fn render(&mut self, out: &mut [f32]) {
        for voice in self.voices.iter_mut().filter(|v| v.level > 0.0) {
            for sample in out.iter_mut() {
                *sample += voice.level * (std::f32::consts::TAU * voice.phase).sin();
                voice.phase = (voice.phase + voice.step).fract();
                if !voice.held {
                    voice.level *= self.release;
                }
            }
            if !voice.held && voice.level < 1e-5 {
                voice.level = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_sounds_at_its_pitch_and_fades_after_its_note_off() {
        let mut preview = Preview::default();
        let mut out = vec![0.0f32; 4800];
        preview.render(&mut out);
        assert!(out.iter().all(|&s| s == 0.0), "silent without notes");
        preview.note_on(69, 1.0);
        preview.render(&mut out);
        // 440 Hz over 0.1 s: 44 periods, 88 sign changes.
        let crossings = out.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((43..=45).contains(&crossings), "{crossings}");
        assert!(out.iter().all(|s| s.abs() <= GAIN + 1e-6));
        preview.note_off(69);
        let mut tail = vec![0.0f32; 48_000];
        preview.render(&mut tail);
        assert!(tail[47_000..].iter().all(|s| s.abs() < 1e-4), "released");
        out.fill(0.0);
        preview.render(&mut out);
        assert!(out.iter().all(|&s| s == 0.0), "voice freed");
    }

    #[test]
    fn more_notes_than_voices_reuse_the_oldest() {
        let mut preview = Preview::default();
        for key in 0..(VOICES as u8 + 4) {
            preview.note_on(40 + key, 1.0);
        }
        let mut out = vec![0.0f32; 256];
        preview.render(&mut out);
        assert!(out.iter().all(|s| s.abs() <= GAIN * VOICES as f32));
        assert!(!preview.voices.iter().any(|v| v.key == 40));
    }
}
