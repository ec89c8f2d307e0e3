// Opt-in live check (see tests/test_live_host.py): load workflows in the real ComfyUI frontend with headless
// Chromium and print, per workflow, the node types the frontend does not know and its own API prompt
// (app.graphToPrompt), as JSON on stdout.  node frontend_check.js URL CHROMIUM WORKFLOW.json...
const { chromium } = require('playwright-core');
const fs = require('fs');

(async () => {
  const [url, executablePath, ...files] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath, args: ['--headless', '--no-sandbox', '--disable-gpu',
    '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync'] });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(String(error)));
  await page.goto(url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph, null, { timeout: 60000 });
  const results = {};
  for (const file of files) {
    const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
    results[file] = await page.evaluate(async (workflow) => {
      await window.app.loadGraphData(workflow);
      const nodes = window.app.graph._nodes || window.app.graph.nodes;
      const missing = nodes.filter((n) => !window.LiteGraph.registered_node_types[n.type]).map((n) => n.type);
      return { missing, output: (await window.app.graphToPrompt()).output };
    }, workflow);
  }
  await browser.close();
  process.stdout.write(JSON.stringify({ results, errors }));
})().catch((error) => { console.error(error); process.exit(1); });
