import assert from 'node:assert/strict';
import { MAX_ALERT_TYPES, Metrics } from '../../edge/metrics.js';

describe('Metrics', () => {
  it('gives the first alert.<rule> types a label each and counts later ones as alert.other; contract types always', async () => {
    const m = new Metrics();
    for (let i = 0; i < MAX_ALERT_TYPES + 50; i++) m.eventIn(`alert.card_${10_000 + i}`);
    m.eventIn('door.forced', 2);
    m.eventIn('alert.card_10000');
    m.eventOut(`alert.card_${10_000 + MAX_ALERT_TYPES + 1}`);
    const lines = (await m.text()).split('\n').filter((l) => l.startsWith('edgeward_events_in_total{'));
    const types = lines.map((l) => /type="([^"]+)"/.exec(l)?.[1]);
    assert.equal(types.length, MAX_ALERT_TYPES + 2, 'one series per kept alert type, alert.other and door.forced');
    assert.ok(lines.includes('edgeward_events_in_total{type="alert.other"} 50'));
    assert.ok(lines.includes('edgeward_events_in_total{type="alert.card_10000"} 2'));
    assert.ok(lines.includes('edgeward_events_in_total{type="door.forced"} 2'));
    assert.match(await m.text(), /edgeward_events_out_total\{type="alert.other"\} 1/);
  });
});
