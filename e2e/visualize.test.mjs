// End-to-end test of `cargo xtask visualize`'s site in headless Chromium (Debian's package,
// driven by playwright-core; no browser is downloaded).
//
// Usage: node visualize.test.mjs SITE_DIR SCREENSHOT.png
// Opens the index, follows the first piece, checks that every piano roll rendered notes and the
// transition marker, presses play and waits for the playback state to change, and saves a
// screenshot. Exits non-zero with a message on the first failure.
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [site, shot] = process.argv.slice(2);
if (!site || !shot) {
  console.error("usage: node visualize.test.mjs SITE_DIR SCREENSHOT.png");
  process.exit(2);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  // Any request that is not a local file would be a network fetch at view time.
  const remote = [];
  page.on("request", (r) => { if (!r.url().startsWith("file:")) remote.push(r.url()); });

  await page.goto(pathToFileURL(path.resolve(site, "index.html")).href);
  const links = await page.locator("a[href^='pieces/']").count();
  check(links > 0, "the index lists no pieces");
  await page.locator("a[href^='pieces/']").first().click();
  await page.waitForSelector("#roll-main[data-rendered]", { timeout: 10000 });

  const rolls = await page.$$eval("canvas.roll", (cs) =>
    cs.map((c) => ({ id: c.id, notes: Number(c.dataset.rendered || 0), marker: c.dataset.transitionX })));
  for (const r of rolls) {
    check(r.notes > 0, `piano roll ${r.id} drew no notes`);
    check(r.marker !== undefined, `piano roll ${r.id} has no transition marker`);
  }
  // The marker is really on the canvas: a column of the marker's red.
  const red = await page.$eval("#roll-main", (c) => {
    const x = Number(c.dataset.transitionX);
    const px = c.getContext("2d").getImageData(x, 5, 1, 1).data;
    return px[0] > 200 && px[1] < 120 && px[2] < 120;
  });
  check(red, "no red transition line on the main piano roll");
  const rows = await page.locator("#measures tbody tr").count();
  check(rows >= 4, `the measures table has ${rows} rows, expected truth + 3 systems`);
  const downloads = await page.locator("#downloads a[download]").count();
  check(downloads >= 4, `only ${downloads} MIDI download links`);

  check((await page.textContent("#status")).trim() === "stopped", "not stopped before play");
  await page.click("#play-both");
  await page.waitForFunction(() => document.body.dataset.playing === "both", null, { timeout: 5000 });
  check((await page.textContent("#status")).includes("playing"), "status did not change on play");
  // The playhead moves while playing.
  const p0 = Number(await page.$eval("#roll-main", (c) => c.dataset.playhead || 0));
  await page.waitForTimeout(600);
  const p1 = Number(await page.$eval("#roll-main", (c) => c.dataset.playhead || 0));
  check(p1 > p0, `the playhead did not move (${p0} → ${p1})`);
  const audioState = await page.evaluate(() => typeof AudioContext);
  check(audioState === "function", "no Web Audio in this browser");
  await page.screenshot({ path: shot, fullPage: true });
  await page.click("#stop");
  await page.waitForFunction(() => document.body.dataset.playing === "", null, { timeout: 5000 });

  check(errors.length === 0, "errors in the page: " + errors.join("; "));
  check(remote.length === 0, "the page fetched from the network: " + remote.join(", "));
  console.log(`ok: ${rolls.length} piano rolls with transition markers, playback state changes, screenshot ${shot}`);
} finally {
  await browser.close();
}
