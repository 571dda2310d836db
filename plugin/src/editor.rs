//! The editor: what Continuator is doing, and its parameters.
//!
//! The status comes from atomics the audio and inference threads publish ([`Shared`]); the GUI
//! only reads them, so opening the editor never disturbs playback.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nice_plug::context::gui::GuiContext;
use nice_plug::editor::dpi::LogicalSize;
use nice_plug_egui::baseview::HandlerError;
use nice_plug_egui::widgets::generic_ui::{self, GenericSlider};
use nice_plug_egui::{
    EguiEditor, EguiEditorState, EguiNiceSettings, Frame, NiceEguiApp, RepaintNotifier,
};

use crate::params::{ContinuatorParams, Mode};
use crate::shared::{Shared, NO_TAKE};
use crate::status::ModelState;

/// The editor's size when first opened: tall enough for the status and every parameter.
pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(LogicalSize::new(440.0, 760.0), 1.0)
}

pub struct StatusApp {
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    gui: Option<GuiContext>,
}

impl NiceEguiApp for StatusApp {
    fn build(
        &mut self,
        _egui: egui::Context,
        gui: GuiContext,
        _frame: &mut Frame,
    ) -> Result<(), HandlerError> {
        self.gui = Some(gui);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut Frame) {
        let counters = &self.shared.counters;
        let model = match self.shared.model.state() {
            ModelState::NotStarted => "not started",
            ModelState::Loading => "loading…",
            ModelState::Ready => "listening",
            ModelState::Generating => "continuing…",
            ModelState::Failed => "no model (MIDI passes through)",
        };
        ui.heading("Continuator");
        egui::Grid::new("status").num_columns(2).show(ui, |ui| {
            ui.label("Model");
            ui.label(model);
            ui.end_row();
            ui.label("Mode");
            ui.label(match self.params.mode.value() {
                Mode::Manual => "Manual",
                Mode::Auto => "Auto (call and response)",
            });
            ui.end_row();
            ui.label("Playing a take");
            ui.label(if self.shared.active_take() == NO_TAKE {
                "no"
            } else {
                "yes"
            });
            ui.end_row();
            ui.label("Dropped input events");
            ui.label(counters.dropped_events.load(Ordering::Relaxed).to_string());
            ui.end_row();
            ui.label("Late notes dropped");
            ui.label(counters.late_notes.load(Ordering::Relaxed).to_string());
            ui.end_row();
            ui.label("Overflow notes dropped");
            ui.label(counters.overflow_notes.load(Ordering::Relaxed).to_string());
            ui.end_row();
        });
        let message = self.shared.model.message();
        if !message.is_empty() {
            ui.colored_label(egui::Color32::from_rgb(230, 160, 60), message);
        }
        ui.separator();
        if let Some(gui) = &self.gui {
            let setter = gui.param_setter();
            // Hosts may open the editor smaller than asked (or scale it): every parameter stays
            // reachable.
            egui::ScrollArea::vertical().show(ui, |ui| {
                generic_ui::create(ui, self.params.clone(), &setter, GenericSlider);
            });
        }
        // The counters change without any input event: look again a few times a second.
        ui.ctx().request_repaint_after(Duration::from_millis(250));
    }

    fn editor_closed(&mut self) {
        self.gui = None;
    }
}

pub fn create(
    params: Arc<ContinuatorParams>,
    shared: Arc<Shared>,
    state: Arc<EguiEditorState>,
) -> Option<EguiEditor<StatusApp>> {
    nice_plug_egui::create_egui_editor(
        state,
        RepaintNotifier::new(),
        EguiNiceSettings::new().with_tile("Continuator"),
        StatusApp {
            params,
            shared,
            gui: None,
        },
    )
}
