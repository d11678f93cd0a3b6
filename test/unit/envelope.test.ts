import assert from 'node:assert/strict';
import { DEFAULT_SEVERITY, type EventType, messagesFor } from '../../edge/envelope.js';

describe('envelope messages', () => {
  // Every type a built driver raises as warning or critical, beyond the defaults.
  const DRIVER_ALERTS: EventType[] = ['alert.door_tamper'];

  it('gives every warning and critical type of the vocabulary, and every driver alert, its own text in zh, bo and en', () => {
    const types: EventType[] = [
      ...Object.entries(DEFAULT_SEVERITY)
        .filter(([, sev]) => sev !== 'info')
        .map(([t]) => t as EventType),
      ...DRIVER_ALERTS,
    ];
    for (const type of types) {
      const m = messagesFor(type, 'door-a');
      for (const lang of ['zh', 'bo', 'en'] as const) {
        assert.ok(m[lang].startsWith('door-a'), `${type} ${lang} names the device: ${m[lang]}`);
        // The generic template shows the type itself: a code, not words, to an officer.
        assert.ok(!m[lang].includes(type), `${type} ${lang} has its own text, not the generic one: ${m[lang]}`);
      }
    }
  });
});
