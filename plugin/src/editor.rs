//! The editor: the piano roll of what was played and what comes next, the variations, the takes,
//! export and style, the status, and every parameter.
//!
//! What it shows comes from the inference thread's [`EditorView`] (a triple buffer: the newest
//! whole view, never a half-written one) and from atomics the audio thread publishes
//! ([`Shared`]); what it asks for goes back as [`Command`]s or parameter changes. The audio thread
//! never waits for the GUI.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use egui::{Color32, RichText, Sense, Vec2};
use nice_plug::context::gui::GuiContext;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug::prelude::{BoolParam, Enum, EnumParam, Param, ParamSetter};
use nice_plug_egui::baseview::HandlerError;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{
    EguiEditor, EguiEditorState, EguiNiceSettings, Frame, NiceEguiApp, RepaintNotifier,
};

use crate::params::ContinuatorParams;
use crate::roll::{self, Shown};
use crate::shared::{Shared, NO_TAKE};
use crate::status::ModelState;
use crate::takes::Selection;
use crate::view::{Command, CommandSender, EditorView, ExportPart, ViewOutput};

/// The editor's size when first opened.
pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(LogicalSize::new(900.0, 760.0), 1.0)
}

/// Height of the main roll, and of the small rolls of the variations row.
const ROLL_HEIGHT: f32 = 200.0;
const CANDIDATE_HEIGHT: f32 = 80.0;

/// The status line: what Continuator is doing now.
pub fn status_line(
    state: ModelState,
    playing: bool,
    tokens_per_second: Option<f32>,
    message: &str,
) -> String {
    match state {
        ModelState::NotStarted => "not started (the host has not activated the plugin)".into(),
        ModelState::Loading => "loading the model…".into(),
        ModelState::Failed => format!("no model (MIDI passes through): {message}"),
        ModelState::Generating => match tokens_per_second {
            Some(rate) => format!("thinking at {rate:.0} tokens/s"),
            None => "thinking…".into(),
        },
        ModelState::Ready if playing => "playing".into(),
        ModelState::Ready if !message.is_empty() => message.to_owned(),
        ModelState::Ready => "listening".into(),
    }
}

pub struct StatusApp {
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    view: ViewOutput,
    commands: CommandSender,
    gui: Option<GuiContext>,
    /// The style file field's text.
    style_path: String,
}

impl StatusApp {
    fn send(&self, command: Command) {
        // The inference thread is gone only while the plugin shuts down.
        let _ = self.commands.send(command);
    }
}

fn press<P: Param>(setter: &ParamSetter, param: &P, value: P::Plain) {
    setter.begin_set_parameter(param);
    setter.set_parameter(param, value);
    setter.end_set_parameter(param);
}

fn slider<P: Param>(ui: &mut egui::Ui, setter: &ParamSetter, param: &P) {
    ui.label(param.name());
    ui.add(ParamSlider::for_param(param, setter).with_width(160.0));
    ui.end_row();
}

fn toggle(ui: &mut egui::Ui, setter: &ParamSetter, param: &BoolParam) {
    ui.label(param.name());
    let mut on = param.value();
    if ui.checkbox(&mut on, "").changed() {
        press(setter, param, on);
    }
    ui.end_row();
}

fn choice<T: Enum + PartialEq + 'static>(
    ui: &mut egui::Ui,
    setter: &ParamSetter,
    param: &EnumParam<T>,
) {
    ui.label(param.name());
    let names = T::variants();
    let current = param.value().to_index();
    egui::ComboBox::from_id_salt(param.name())
        .selected_text(names.get(current).copied().unwrap_or("?"))
        .show_ui(ui, |ui| {
            for (index, name) in names.iter().enumerate() {
                if ui.selectable_label(index == current, *name).clicked() {
                    press(setter, param, T::from_index(index));
                }
            }
        });
    ui.end_row();
}

impl NiceEguiApp for StatusApp {
    fn build(
        &mut self,
        _egui: egui::Context,
        gui: GuiContext,
        _frame: &mut Frame,
    ) -> Result<(), HandlerError> {
        self.gui = Some(gui);
        self.style_path = self.params.adapter_path.read().clone().unwrap_or_default();
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let view: EditorView = match self.view.lock() {
            Ok(mut output) => output.read().clone(),
            Err(_) => EditorView::default(),
        };
        let transport = self.shared.transport.view();
        let playing = self.shared.active_take() != NO_TAKE;
        let status = status_line(
            self.shared.model.state(),
            playing,
            view.tokens_per_second,
            &self.shared.model.message(),
        );
        let counters = &self.shared.counters;

        ui.horizontal(|ui| {
            ui.heading("Continuator");
            ui.label(RichText::new(status).strong());
        });
        ui.label(format!(
            "dropped input events {} · late notes {} · overflow notes {}",
            counters.dropped_events.load(Ordering::Relaxed),
            counters.late_notes.load(Ordering::Relaxed),
            counters.overflow_notes.load(Ordering::Relaxed),
        ));

        // The roll: the bars played, the transition, the continuation, the playhead.
        let width = ui.available_width();
        let (rect, response) =
            ui.allocate_exact_size(Vec2::new(width, ROLL_HEIGHT), Sense::hover());
        if let Some(pointer) = response.hover_pos() {
            if let Some(key) = roll::RollLayout::new(rect, &view.roll).key_at(pointer.y) {
                response.on_hover_text_at_pointer(roll::key_name(key));
            }
        }
        roll::paint(
            ui.painter(),
            rect,
            &view.roll,
            Shown::Main,
            transport.position,
        );

        let Some(gui) = self.gui.clone() else {
            return;
        };
        let setter = gui.param_setter();

        // The variations: the candidates side by side; a click picks one.
        let candidates = view.roll.variations.len();
        if candidates > 1 {
            ui.label("Variations (click to pick)");
            let gap = 6.0;
            let each = (width - gap * (candidates as f32 - 1.0)) / candidates as f32;
            let small = view.roll.continuation_bars();
            ui.horizontal(|ui| {
                ui.spacing_mut().item_spacing.x = gap;
                for n in 0..candidates {
                    let (rect, response) =
                        ui.allocate_exact_size(Vec2::new(each, CANDIDATE_HEIGHT), Sense::click());
                    roll::paint(
                        ui.painter(),
                        rect,
                        &small,
                        Shown::Candidate(n),
                        transport.position,
                    );
                    if n == view.roll.picked {
                        ui.painter().rect_stroke(
                            rect,
                            2.0,
                            egui::Stroke::new(2.0, roll::CONTINUATION),
                            egui::StrokeKind::Inside,
                        );
                    }
                    // The Pick parameter is the one way to choose (automatable, saved).
                    if response.clicked() {
                        press(&setter, &self.params.pick, n as i32 + 1);
                    }
                }
            });
        }

        ui.horizontal(|ui| {
            if ui.button("Continue").clicked() {
                self.send(Command::Continue);
            }
            if ui
                .add_enabled(view.current.is_some(), egui::Button::new("Replay take"))
                .clicked()
            {
                if let Some(take) = view.current {
                    self.send(Command::Audition(take));
                }
            }
            if ui
                .add_enabled(view.current.is_some(), egui::Button::new("Regenerate"))
                .clicked()
            {
                self.send(Command::Regenerate);
            }
            if ui
                .add_enabled(view.can_undo, egui::Button::new("Undo"))
                .clicked()
            {
                self.send(Command::Undo);
            }
            if ui
                .add_enabled(view.can_redo, egui::Button::new("Redo"))
                .clicked()
            {
                self.send(Command::Redo);
            }
        });

        ui.columns(2, |columns| {
            let ui = &mut columns[0];
            ui.label(RichText::new("Takes").strong());
            egui::ScrollArea::vertical()
                .id_salt("takes")
                .max_height(150.0)
                .show(ui, |ui| {
                    if view.takes.is_empty() {
                        ui.label("none yet");
                    }
                    for line in view.takes.iter().rev() {
                        ui.horizontal(|ui| {
                            let current = view.current == Some(line.number);
                            let text = format!(
                                "take {} · {} bars · {} notes{}",
                                line.number,
                                line.bars,
                                line.notes,
                                if line.variations > 1 {
                                    format!(" · {} variations", line.variations)
                                } else {
                                    String::new()
                                }
                            );
                            ui.label(if current {
                                RichText::new(text).color(roll::CONTINUATION)
                            } else {
                                RichText::new(text)
                            });
                            if ui.small_button("play").clicked() {
                                self.send(Command::Audition(line.number));
                            }
                            if !current && ui.small_button("pick").clicked() {
                                self.send(Command::Pick(Selection {
                                    take: line.number,
                                    variation: line.picked,
                                }));
                            }
                        });
                    }
                });

            let ui = &mut columns[1];
            ui.label(RichText::new("Export").strong());
            let mut folder = self
                .params
                .export_folder
                .read()
                .map(|f| f.clone())
                .unwrap_or_default();
            ui.horizontal(|ui| {
                ui.label("Folder");
                if ui.text_edit_singleline(&mut folder).changed() {
                    if let Ok(mut saved) = self.params.export_folder.write() {
                        *saved = folder.clone();
                    }
                }
            });
            ui.horizontal(|ui| {
                let enabled = view.current.is_some();
                for (label, part) in [
                    ("Export take", ExportPart::Whole),
                    ("Continuation only", ExportPart::ContinuationOnly),
                ] {
                    if ui.add_enabled(enabled, egui::Button::new(label)).clicked() {
                        self.send(Command::Export {
                            folder: PathBuf::from(folder.trim()),
                            part,
                        });
                    }
                }
            });
            match &view.export {
                Some(Ok(path)) => {
                    ui.label(format!("saved {}", path.display()));
                }
                Some(Err(err)) => {
                    ui.colored_label(Color32::from_rgb(230, 160, 60), err);
                }
                None => {}
            }
            ui.label(RichText::new("Style").strong());
            ui.label(match &view.style {
                Some(name) => format!("adapter: {name}"),
                None => "the model alone".into(),
            });
            ui.horizontal(|ui| {
                ui.text_edit_singleline(&mut self.style_path);
                if ui.button("Load").clicked() {
                    let path = self.style_path.trim();
                    self.send(Command::Style(
                        (!path.is_empty()).then(|| PathBuf::from(path)),
                    ));
                }
                if ui.button("Clear").clicked() {
                    self.style_path.clear();
                    self.send(Command::Style(None));
                }
            });
            if let Some(err) = &view.style_error {
                ui.colored_label(Color32::from_rgb(230, 160, 60), err);
            }
        });

        ui.separator();
        let params = &self.params;
        // Hosts may open the editor smaller than asked (or scale it): everything stays reachable.
        egui::ScrollArea::vertical()
            .id_salt("parameters")
            .show(ui, |ui| {
                ui.columns(2, |columns| {
                    egui::Grid::new("play")
                        .num_columns(2)
                        .show(&mut columns[0], |ui| {
                            choice(ui, &setter, &params.mode);
                            slider(ui, &setter, &params.listen_bars);
                            slider(ui, &setter, &params.continue_bars);
                            choice(ui, &setter, &params.start);
                            slider(ui, &setter, &params.auto_silence);
                            slider(ui, &setter, &params.temperature);
                            slider(ui, &setter, &params.top_p);
                            slider(ui, &setter, &params.variations);
                            slider(ui, &setter, &params.pick);
                            slider(ui, &setter, &params.faithfulness);
                            slider(ui, &setter, &params.key);
                            slider(ui, &setter, &params.density);
                            slider(ui, &setter, &params.range_low);
                            slider(ui, &setter, &params.range_high);
                        });
                    egui::Grid::new("routing")
                        .num_columns(2)
                        .show(&mut columns[1], |ui| {
                            toggle(ui, &setter, &params.bypass);
                            toggle(ui, &setter, &params.trigger);
                            toggle(ui, &setter, &params.replay);
                            choice(ui, &setter, &params.trigger_source);
                            slider(ui, &setter, &params.trigger_number);
                            toggle(ui, &setter, &params.thru);
                            slider(ui, &setter, &params.output_channel);
                            toggle(ui, &setter, &params.yield_on_play);
                            toggle(ui, &setter, &params.clear_memory);
                            toggle(ui, &setter, &params.preview);
                            slider(ui, &setter, &params.model_threads);
                        });
                });
            });
        // The playhead and the counters move without any input event.
        ui.ctx().request_repaint_after(Duration::from_millis(33));
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}

pub fn create(
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    view: ViewOutput,
    commands: CommandSender,
    state: Arc<EguiEditorState>,
) -> Option<EguiEditor<StatusApp>> {
    nice_plug_egui::create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::new().with_tile("Continuator"),
        StatusApp {
            params,
            shared,
            view,
            commands,
            gui: None,
            style_path: String::new(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_what_is_happening() {
        assert_eq!(status_line(ModelState::Ready, false, None, ""), "listening");
        assert_eq!(status_line(ModelState::Ready, true, None, ""), "playing");
        assert_eq!(
            status_line(ModelState::Generating, false, Some(812.4), ""),
            "thinking at 812 tokens/s"
        );
        assert_eq!(
            status_line(ModelState::Failed, false, None, "no model at /x"),
            "no model (MIDI passes through): no model at /x"
        );
        assert_eq!(
            status_line(ModelState::Ready, false, None, "start the transport"),
            "start the transport"
        );
    }
}
