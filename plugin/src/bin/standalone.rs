//! Continuator as an app: nice-plug's standalone wrapper runs the MIDI effect with MIDI in and out
//! (JACK or ALSA) and opens its editor. `--help` lists the backend, device and MIDI port options.

fn main() {
    nice_plug::wrapper::standalone::nice_export_standalone::<continuator::Continuator>();
}
