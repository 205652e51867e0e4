const { chromium } = require('playwright-core');
(async () => {
  const base = process.argv[2];
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] });
  const open = async (user, transport) => {
    const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const page = await ctx.newPage();
    page.on('console', m => { if (m.type() === 'error') console.log(user, 'console:', m.text()); });
    await page.goto(base + '/');
    await page.fill('#room', 'demo');
    await page.fill('#user', user);
    await page.selectOption('#transport', transport);
    await page.click('#connect');
    await page.waitForFunction(() => /live/i.test(document.querySelector('#status').textContent), null, { timeout: 10000 });
    return page;
  };
  const a = await open('alice', 'ws');
  const b = await open('bob', 'sse');
  await a.fill('#text', 'hi from websocket'); await a.click('#send');
  await b.waitForFunction(() => document.querySelector('#messages').textContent.includes('hi from websocket'), null, { timeout: 10000 });
  await b.fill('#text', 'hi from sse'); await b.click('#send');
  await a.waitForFunction(() => document.querySelector('#messages').textContent.includes('hi from sse'), null, { timeout: 10000 });
  await a.waitForFunction(() => document.querySelector('#presence').textContent.includes('bob'), null, { timeout: 10000 });
  await a.screenshot({ path: (process.env.SCREENSHOT_DIR || '.') + '/alice.png' });
  await b.screenshot({ path: (process.env.SCREENSHOT_DIR || '.') + '/bob.png' });
  console.log('OK', await a.textContent('#status'), '|', await b.textContent('#status'));
  await browser.close();
})().catch(e => { console.error('FAIL', e.message); process.exit(1); });
