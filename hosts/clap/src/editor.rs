//! `--open-editor DIR`: opens the plugin's GUI the way a DAW on Linux does, in three states, and
//! checks that it renders each.
//!
//! The GUI is created through the CLAP gui extension (X11 API, embedded), given a parent window
//! this host creates on `$DISPLAY`, and shown while the host keeps processing blocks (a few notes
//! go through, so the editor has live state to show) and answers the plugin's main-thread
//! callbacks. Then the parent window's pixels are read back (`GetImage`) and written as a PNG.
//! The check fails unless the plugin's window has the size the plugin asked for and the picture
//! is a rendered editor: many distinct colours, and hardly any of the parent's background colour
//! (a colour no editor uses) left showing. Then the GUI is hidden and destroyed, and the plugin
//! deactivated.
//!
//! The three states ([`Scene`]): a fresh plugin with the transport stopped (an empty roll), the
//! musician playing in Manual mode (their notes in the roll, no continuation), and a continuation
//! with three variations (the continuation in the roll and three small candidate rolls). Each
//! screenshot must show the roll (its background colour over a large area) and, as the state
//! demands, enough pixels of the roll's note colours, or none.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clack_extensions::gui::{GuiApiType, GuiConfiguration, GuiSize, PluginGui, Window};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ConfigureWindowAux, ConnectionExt as _, CreateWindowAux, ImageFormat, ImageOrder, WindowClass,
};
use x11rb::rust_connection::RustConnection;

use crate::ClapPlugin;

/// The roll's colours, as `plugin/src/roll.rs` paints them.
const ROLL_BACKGROUND: [u8; 3] = [24, 26, 30];
const HEARD: [u8; 3] = [80, 200, 160];
const CONTINUATION: [u8; 3] = [255, 150, 40];
const CANDIDATE: [u8; 3] = [150, 110, 70];
/// A roll is drawn: at least this many pixels of its background (the main roll alone is some
/// 900 × 200).
const MIN_ROLL_PIXELS: usize = 60_000;
/// Notes are drawn: at least this many pixels of a note colour.
const MIN_NOTE_PIXELS: usize = 150;

/// What the editor is shown doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    /// A fresh plugin, the transport stopped.
    Empty,
    /// Manual mode, the musician playing: their notes, no continuation.
    Listening,
    /// Auto mode with three variations: four bars played, then the continuation.
    Variations,
}

impl Scene {
    fn name(self) -> &'static str {
        match self {
            Scene::Empty => "empty",
            Scene::Listening => "listening",
            Scene::Variations => "variations",
        }
    }

    /// Parameter changes before the editor opens (CLAP values: enum index, step index).
    fn setup(self, plugin: &mut ClapPlugin) -> Result<()> {
        match self {
            Scene::Empty => Ok(()),
            Scene::Listening => plugin.set_param("Mode", 0.0),
            Scene::Variations => plugin.set_param("Variations", 2.0),
        }
    }

    /// Whether the transport has played what this state needs by block `index` (see
    /// [`play_block`]): the four bars of [`Scene::Variations`] (the continuation follows the
    /// pause after them); the other states need no playing first.
    fn ready(self, index: u32) -> bool {
        match self {
            Scene::Empty | Scene::Listening => true,
            Scene::Variations => index / BLOCKS_PER_BEAT >= VARIATIONS_BEATS,
        }
    }

    /// Whether a screenshot shows what this state should: (colour, at least, at most) pixels.
    fn expected(self) -> &'static [([u8; 3], usize, usize)] {
        match self {
            Scene::Empty => &[
                (ROLL_BACKGROUND, MIN_ROLL_PIXELS, usize::MAX),
                (HEARD, 0, 0),
                (CONTINUATION, 0, 0),
            ],
            Scene::Listening => &[
                (ROLL_BACKGROUND, MIN_ROLL_PIXELS, usize::MAX),
                (HEARD, MIN_NOTE_PIXELS, usize::MAX),
                (CONTINUATION, 0, 0),
            ],
            Scene::Variations => &[
                (ROLL_BACKGROUND, MIN_ROLL_PIXELS, usize::MAX),
                (HEARD, MIN_NOTE_PIXELS, usize::MAX),
                (CONTINUATION, MIN_NOTE_PIXELS, usize::MAX),
                (CANDIDATE, MIN_NOTE_PIXELS, usize::MAX),
            ],
        }
    }
}

/// How much faster than real time the transport runs in the editor check (the continuation
/// comes after four bars and a pause: seconds, not ten).
const EDITOR_SPEEDUP: f64 = 4.0;
use continuator_host_scenario::{Block, Edge, Plugin as _, BLOCK, SAMPLE_RATE};

/// The parent window's background: pure magenta, which the editor's theme never draws.
const BACKGROUND: [u8; 3] = [0xFF, 0x00, 0xFF];
/// How long the editor runs (processing blocks in real time) before its pixels are read.
const SETTLE: Duration = Duration::from_millis(1500);
/// How long a slow machine (software GL) gets to show the scene's state once the transport has
/// played it (see [`Scene::ready`]). Counted from that block, not from opening the editor: on a
/// loaded 2-core machine the debug host's blocks and screenshots ran slower than the transport
/// they stand for, and a wall-clock deadline from the start expired before the four bars of
/// [`Scene::Variations`] had even been played.
const DEADLINE: Duration = Duration::from_secs(20);
/// A rendered egui editor has antialiased text: a couple of hundred colours. Without its font
/// (every glyph a box) it had 13.
const MIN_COLOURS: usize = 64;
/// At most this fraction of the picture may be the parent's background.
const MAX_BACKGROUND: f64 = 0.01;

/// An RGB picture of the parent window.
struct Screenshot {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Screenshot {
    fn write_png(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .with_context(|| format!("writing {}", path.display()))?;
        writer
            .write_image_data(&self.rgb)
            .with_context(|| format!("writing {}", path.display()))?;
        writer
            .finish()
            .with_context(|| format!("writing {}", path.display()))
    }

    /// How many distinct colours, and what fraction of the pixels is the background.
    fn stats(&self) -> (usize, f64) {
        let mut colours: HashMap<[u8; 3], usize> = HashMap::new();
        for px in self.rgb.chunks_exact(3) {
            *colours.entry([px[0], px[1], px[2]]).or_default() += 1;
        }
        let pixels = (self.rgb.len() / 3).max(1);
        let background = colours.get(&BACKGROUND).copied().unwrap_or(0);
        (colours.len(), background as f64 / pixels as f64)
    }

    fn is_rendered_editor(&self) -> bool {
        let (colours, background) = self.stats();
        colours >= MIN_COLOURS && background <= MAX_BACKGROUND
    }

    /// Pixels within two steps of `colour` on every channel (software GL may round).
    fn count(&self, colour: [u8; 3]) -> usize {
        self.rgb
            .chunks_exact(3)
            .filter(|px| px.iter().zip(colour).all(|(&a, b)| a.abs_diff(b) <= 2))
            .count()
    }

    /// What `scene` should show that this screenshot lacks, if anything.
    fn missing(&self, scene: Scene) -> Option<String> {
        scene.expected().iter().find_map(|&(colour, min, max)| {
            let n = self.count(colour);
            (n < min || n > max)
                .then(|| format!("{n} pixels of {colour:?} (expected {min}..={max})"))
        })
    }
}

/// The host's top-level window on the X server, which the plugin's window goes into.
struct ParentWindow {
    conn: RustConnection,
    id: u32,
    /// Bits per pixel, scanline padding, and byte order of a `ZPixmap` image of this window.
    bits_per_pixel: u8,
    scanline_pad: u8,
    lsb_first: bool,
    masks: [u32; 3],
}

impl ParentWindow {
    /// The X server of `$DISPLAY`: the plugin opens its window there too.
    fn connect() -> Result<(RustConnection, usize)> {
        x11rb::connect(None).context("connecting to the X server ($DISPLAY; run under xvfb-run)")
    }

    fn create((conn, screen_num): (RustConnection, usize), size: GuiSize) -> Result<Self> {
        let setup = conn.setup();
        let screen = &setup.roots[screen_num];
        let depth = screen.root_depth;
        let visual = screen
            .allowed_depths
            .iter()
            .flat_map(|d| &d.visuals)
            .find(|v| v.visual_id == screen.root_visual)
            .context("the X screen's root visual is not among its visuals")?;
        let masks = [visual.red_mask, visual.green_mask, visual.blue_mask];
        let format = setup
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .with_context(|| format!("no X pixmap format for depth {depth}"))?;
        ensure!(
            format.bits_per_pixel == 32 && masks.iter().all(|m| m.count_ones() == 8),
            "the X screen has {} bits per pixel and colour masks {masks:x?}; this host reads \
             only 8-bit channels in 32-bit pixels (run Xvfb with -screen 0 WxHx24)",
            format.bits_per_pixel
        );
        let background = masks.iter().zip(BACKGROUND).fold(0, |px, (&mask, c)| {
            px | (u32::from(c) << mask.trailing_zeros())
        });
        let id = conn.generate_id().context("allocating an X window id")?;
        let (width, height) = window_dimensions(size)?;
        conn.create_window(
            depth,
            id,
            screen.root,
            0,
            0,
            width,
            height,
            0,
            WindowClass::INPUT_OUTPUT,
            screen.root_visual,
            &CreateWindowAux::new().background_pixel(background),
        )
        .context("creating the parent window")?
        .check()
        .context("creating the parent window")?;
        let parent = ParentWindow {
            bits_per_pixel: format.bits_per_pixel,
            scanline_pad: format.scanline_pad,
            lsb_first: setup.image_byte_order == ImageOrder::LSB_FIRST,
            masks,
            conn,
            id,
        };
        parent
            .conn
            .map_window(id)
            .context("mapping the parent window")?
            .check()
            .context("mapping the parent window")?;
        Ok(parent)
    }

    fn resize(&self, size: GuiSize) -> Result<()> {
        let (width, height) = window_dimensions(size)?;
        self.conn
            .configure_window(
                self.id,
                &ConfigureWindowAux::new()
                    .width(u32::from(width))
                    .height(u32::from(height)),
            )
            .context("resizing the parent window")?
            .check()
            .context("resizing the parent window")
    }

    /// The sizes of the windows the plugin put into the parent window.
    fn children(&self) -> Result<Vec<GuiSize>> {
        let tree = self
            .conn
            .query_tree(self.id)
            .context("listing the parent window's children")?
            .reply()
            .context("listing the parent window's children")?;
        tree.children
            .iter()
            .map(|&child| {
                let geometry = self
                    .conn
                    .get_geometry(child)
                    .context("reading the plugin window's geometry")?
                    .reply()
                    .context("reading the plugin window's geometry")?;
                Ok(GuiSize {
                    width: u32::from(geometry.width),
                    height: u32::from(geometry.height),
                })
            })
            .collect()
    }

    fn screenshot(&self) -> Result<Screenshot> {
        let geometry = self
            .conn
            .get_geometry(self.id)
            .context("reading the parent window's geometry")?
            .reply()
            .context("reading the parent window's geometry")?;
        let (width, height) = (geometry.width, geometry.height);
        let image = self
            .conn
            .get_image(ImageFormat::Z_PIXMAP, self.id, 0, 0, width, height, !0)
            .context("reading the parent window's pixels (GetImage)")?
            .reply()
            .context("reading the parent window's pixels (GetImage)")?;
        let pad = usize::from(self.scanline_pad).max(8);
        let stride =
            (usize::from(width) * usize::from(self.bits_per_pixel)).div_ceil(pad) * pad / 8;
        ensure!(
            image.data.len() >= stride * usize::from(height),
            "GetImage returned {} bytes for {width}x{height}, expected {}",
            image.data.len(),
            stride * usize::from(height)
        );
        let mut rgb = Vec::with_capacity(usize::from(width) * usize::from(height) * 3);
        for row in image.data.chunks_exact(stride).take(usize::from(height)) {
            for px in row[..usize::from(width) * 4].chunks_exact(4) {
                let bytes = [px[0], px[1], px[2], px[3]];
                let value = if self.lsb_first {
                    u32::from_le_bytes(bytes)
                } else {
                    u32::from_be_bytes(bytes)
                };
                // Each mask is 8 bits wide (checked on creation), so this is a whole channel.
                rgb.extend(
                    self.masks
                        .iter()
                        .map(|&mask| ((value & mask) >> mask.trailing_zeros()) as u8),
                );
            }
        }
        Ok(Screenshot {
            width: u32::from(width),
            height: u32::from(height),
            rgb,
        })
    }

    fn destroy(self) -> Result<()> {
        self.conn
            .destroy_window(self.id)
            .context("destroying the parent window")?
            .check()
            .context("destroying the parent window")
    }
}

fn window_dimensions(size: GuiSize) -> Result<(u16, u16)> {
    let width = u16::try_from(size.width).ok().filter(|&w| w > 0);
    let height = u16::try_from(size.height).ok().filter(|&h| h > 0);
    match (width, height) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => bail!(
            "the editor asked for {}x{} pixels, not a window size",
            size.width,
            size.height
        ),
    }
}

/// A beat at 120 BPM is 24000 samples: ~47 blocks.
const BLOCKS_PER_BEAT: u32 = 47;
/// The musician's phrase in [`Scene::Variations`]: four bars of 4/4.
const VARIATIONS_BEATS: u32 = 16;

/// One block of a 120 BPM 4/4 transport (stopped for [`Scene::Empty`]) with a note on each beat
/// (in [`Scene::Variations`], for four bars only), at [`EDITOR_SPEEDUP`] times real time.
fn play_block(plugin: &mut ClapPlugin, index: u32, scene: Scene) -> Result<()> {
    let position = f64::from(index * BLOCK) / SAMPLE_RATE * 2.0;
    let block = Block {
        playing: scene != Scene::Empty,
        position,
        bpm: 120.0,
        numerator: 4,
        denominator: 4,
        frames: BLOCK,
    };
    // A note on each beat, off half a beat later.
    let beat = index / BLOCKS_PER_BEAT;
    let key = 60 + (beat % 5) as u8 + if beat.is_multiple_of(4) { 7 } else { 0 };
    let playing = match scene {
        Scene::Empty => false,
        Scene::Listening => true,
        Scene::Variations => beat < VARIATIONS_BEATS,
    };
    let input: &[Edge] = match index % BLOCKS_PER_BEAT {
        0 if playing => &[Edge {
            time: 0,
            channel: 0,
            key,
            on: true,
        }],
        23 if playing => &[Edge {
            time: 0,
            channel: 0,
            key,
            on: false,
        }],
        _ => &[],
    };
    plugin.process(&block, input)?;
    std::thread::sleep(Duration::from_secs_f64(
        f64::from(BLOCK) / SAMPLE_RATE / EDITOR_SPEEDUP,
    ));
    Ok(())
}

/// Checks the editor in every [`Scene`], each on a freshly loaded plugin, writing
/// `dir/editor-<scene>.png`.
pub fn check_all(mut load: impl FnMut() -> Result<ClapPlugin>, dir: &Path) -> Result<()> {
    for scene in [Scene::Empty, Scene::Listening, Scene::Variations] {
        let mut plugin = load()?;
        scene.setup(&mut plugin)?;
        let png = dir.join(format!("editor-{}.png", scene.name()));
        check(plugin, &png, scene).with_context(|| format!("the editor, {}", scene.name()))?;
    }
    Ok(())
}

/// Opens the editor of `plugin`, saves a screenshot to `png`, checks it, and closes everything.
pub fn check(mut plugin: ClapPlugin, png: &Path, scene: Scene) -> Result<()> {
    let started = Instant::now();
    let gui: PluginGui = plugin
        .instance
        .plugin_handle()
        .get_extension()
        .context("the plugin has no CLAP gui extension")?;
    let config = GuiConfiguration {
        api_type: GuiApiType::X11,
        is_floating: false,
    };
    ensure!(
        gui.is_api_supported(&plugin.instance.plugin_handle(), config),
        "the plugin does not support an embedded X11 GUI"
    );
    let display = ParentWindow::connect()?;
    gui.create(&plugin.instance.plugin_handle(), config)
        .map_err(|e| anyhow!("gui.create (X11, embedded): {e}"))?;

    let mut parent = None;
    let result = show_and_capture(&mut plugin, gui, display, png, scene, &mut parent);

    // Close in every case: hide, destroy, answer what the plugin's window thread still sends,
    // and only then take the parent window away.
    let hidden = match parent {
        Some(_) => gui
            .hide(&plugin.instance.plugin_handle())
            .map_err(|e| anyhow!("gui.hide: {e}")),
        None => Ok(()),
    };
    gui.destroy(&plugin.instance.plugin_handle());
    plugin.run_main_thread_callback();
    let destroyed = parent.map_or(Ok(()), ParentWindow::destroy);
    plugin.close();
    result.and(hidden).and(destroyed)?;
    eprintln!(
        "editor ({}): opened, rendered, checked and closed in {:.1} s",
        scene.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Embeds and shows the created GUI in a new parent window (left in `parent`, for `check` to
/// destroy after the GUI), then takes, saves and checks the screenshot.
fn show_and_capture(
    plugin: &mut ClapPlugin,
    gui: PluginGui,
    display: (RustConnection, usize),
    png: &Path,
    scene: Scene,
    parent: &mut Option<ParentWindow>,
) -> Result<()> {
    if let Err(e) = gui.set_scale(&plugin.instance.plugin_handle(), 1.0) {
        // Allowed: a plugin may take the scale from the system instead.
        eprintln!("editor: gui.set_scale(1.0) refused ({e}); going on");
    }
    let mut size = gui
        .get_size(&plugin.instance.plugin_handle())
        .context("gui.get_size gave no size")?;
    let parent = parent.insert(ParentWindow::create(display, size)?);
    // SAFETY: the parent window is destroyed only after `gui.destroy` (see `check`).
    unsafe {
        gui.set_parent(
            &plugin.instance.plugin_handle(),
            Window::from_x11_handle(parent.id.into()),
        )
    }
    .map_err(|e| anyhow!("gui.set_parent: {e}"))?;
    gui.show(&plugin.instance.plugin_handle())
        .map_err(|e| anyhow!("gui.show: {e}"))?;
    let shot = render(plugin, parent, &mut size, scene)?;
    shot.write_png(png)?;
    check_screenshot(&shot, size, parent, png)?;
    if let Some(missing) = shot.missing(scene) {
        bail!(
            "{} does not show the {} editor: {missing}",
            png.display(),
            scene.name()
        );
    }
    Ok(())
}

/// Keeps the host running until the editor shows (or the deadline passes); the last screenshot.
fn render(
    plugin: &mut ClapPlugin,
    parent: &ParentWindow,
    size: &mut GuiSize,
    scene: Scene,
) -> Result<Screenshot> {
    let started = Instant::now();
    // When the transport had played what the scene needs (and the editor had settled).
    let mut ready_since: Option<Instant> = None;
    let mut index = 0;
    loop {
        play_block(plugin, index, scene)?;
        index += 1;
        plugin.run_main_thread_callback();
        let requested = plugin
            .instance
            .access_shared_handler(|h| h.resize_requested.lock().ok().and_then(|mut r| r.take()));
        if let Some(new_size) = requested {
            parent.resize(new_size)?;
            *size = new_size;
        }
        if let Some(destroyed) = plugin
            .instance
            .access_shared_handler(|h| h.gui_closed.lock().ok().and_then(|c| *c))
        {
            bail!("the plugin closed its GUI by itself (destroyed: {destroyed})");
        }
        if ready_since.is_none() && started.elapsed() >= SETTLE && scene.ready(index) {
            ready_since = Some(Instant::now());
        }
        // Every ten blocks once ready: a screenshot, done once it shows the editor.
        if let Some(ready) = ready_since.filter(|_| index % 10 == 0) {
            let shot = parent.screenshot()?;
            let done = shot.is_rendered_editor() && shot.missing(scene).is_none();
            if done || ready.elapsed() >= DEADLINE {
                return Ok(shot);
            }
        }
    }
}

fn check_screenshot(
    shot: &Screenshot,
    size: GuiSize,
    parent: &ParentWindow,
    png: &Path,
) -> Result<()> {
    let children = parent.children()?;
    ensure!(
        children == [size],
        "the plugin's windows in the parent are {children:?}, expected one of the {}x{} it asked \
         for",
        size.width,
        size.height
    );
    ensure!(
        (shot.width, shot.height) == (size.width, size.height),
        "the screenshot is {}x{}, the editor asked for {}x{}",
        shot.width,
        shot.height,
        size.width,
        size.height
    );
    let (colours, background) = shot.stats();
    ensure!(
        colours >= MIN_COLOURS && background <= MAX_BACKGROUND,
        "the editor did not render: {} shows {colours} distinct colours (need {MIN_COLOURS}) and \
         {:.1}% of the parent's background (at most {:.0}%)",
        png.display(),
        background * 100.0,
        MAX_BACKGROUND * 100.0
    );
    eprintln!(
        "editor: {}x{} screenshot with {colours} distinct colours written to {}",
        shot.width,
        shot.height,
        png.display()
    );
    Ok(())
}
