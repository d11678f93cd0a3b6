import assert from 'node:assert/strict';
import { parseCameraProps } from '../../drivers/onvif/index.js';
import { mapNotification, normaliseTopic } from '../../drivers/onvif/topics.js';
import { parseDurationS, parseUntrustedXml, soapBody, text } from '../../drivers/onvif/xml.js';
import { isEdgewardError } from '../../edge/errors.js';

function throwsCode(fn: () => unknown, code: string, re?: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(isEdgewardError(err, code), `expected ${code}, got ${String(err)}`);
    if (re) assert.match(err.message, re);
    return true;
  });
}

describe('onvif untrusted XML', () => {
  it('parses SOAP with namespaces stripped and decodes only predefined entities', () => {
    const doc = parseUntrustedXml(
      '<s:Envelope xmlns:s="x" xmlns:tt="y"><s:Body><tt:Uri>rtsp://h/a?x=1&amp;y=2&#38;z</tt:Uri></s:Body></s:Envelope>',
    );
    assert.equal(text(soapBody(doc), 'Uri'), 'rtsp://h/a?x=1&y=2&z');
  });

  it('refuses DTDs and entity declarations (no expansion, no billion laughs)', () => {
    const bomb = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><Envelope><Body>&lol2;</Body></Envelope>';
    throwsCode(() => parseUntrustedXml(bomb), 'EDGE_ONVIF_BAD_XML', /DTD or entity/);
  });

  it('keeps an undeclared entity reference literal instead of expanding it', () => {
    const doc = parseUntrustedXml('<Envelope><Body><X>&foo;</X></Body></Envelope>');
    assert.equal(text(soapBody(doc), 'X'), '&foo;');
  });

  it('refuses oversized documents before parsing', () => {
    throwsCode(() => parseUntrustedXml(`<a>${'x'.repeat(2000)}</a>`, { maxBytes: 1000 }), 'EDGE_ONVIF_BAD_XML', /too large/);
  });

  it('gives a clear error for garbage, empty input and non-SOAP XML', () => {
    throwsCode(() => parseUntrustedXml('<s:Envelope><s:Body><oops</s:Body>'), 'EDGE_ONVIF_BAD_XML', /not well-formed/);
    throwsCode(() => parseUntrustedXml('HTTP/1.1 500 oops'), 'EDGE_ONVIF_BAD_XML');
    throwsCode(() => parseUntrustedXml('   '), 'EDGE_ONVIF_BAD_XML', /empty/);
    throwsCode(() => soapBody(parseUntrustedXml('<html><body>401</body></html>')), 'EDGE_ONVIF_BAD_XML', /not a SOAP envelope/);
  });

  it('parses xs:durations', () => {
    assert.equal(parseDurationS('PT60S'), 60);
    assert.equal(parseDurationS('PT1M'), 60);
    assert.equal(parseDurationS('PT1H2M3.5S'), 3723.5);
    assert.equal(parseDurationS('P1D'), 86400);
    assert.equal(parseDurationS('soon'), undefined);
  });
});

describe('onvif topic mapping', () => {
  const n = (topic: string, data: Record<string, string>, operation = 'Changed') => ({ topic, data, source: { Source: 'VS1' }, operation, utcTime: '2026-01-01T00:00:00Z' });

  it('maps the common topics to the contracted types, keeping the raw topic', () => {
    const cases: Array<[string, Record<string, string>, string, boolean | undefined]> = [
      ['tns1:VideoSource/MotionAlarm', { State: 'true' }, 'camera.motion', true],
      ['tns1:RuleEngine/CellMotionDetector/Motion', { IsMotion: 'false' }, 'camera.motion', false],
      ['tns1:VideoSource/GlobalSceneChange/ImagingService', { State: 'true' }, 'camera.tamper', true],
      ['tns1:RuleEngine/LineDetector/Crossed', { ObjectId: '7' }, 'camera.analytics', undefined],
      ['tns1:RuleEngine/FieldDetector/ObjectsInside', { IsInside: 'true' }, 'camera.analytics', true],
    ];
    for (const [topic, data, type, state] of cases) {
      const ev = mapNotification(n(topic, data));
      assert.equal(ev?.type, type, topic);
      assert.equal(ev?.data.topic, topic);
      assert.equal(ev?.data.state, state, topic);
    }
  });

  it('accepts any namespace prefix and ignores unmapped topics', () => {
    assert.equal(normaliseTopic('ns0:RuleEngine/ns0:CellMotionDetector/ns0:Motion'), 'RuleEngine/CellMotionDetector/Motion');
    assert.equal(mapNotification(n('tnsaxis:VideoSource/MotionAlarm', { State: '1' }))?.type, 'camera.motion');
    assert.equal(mapNotification(n('tns1:Monitoring/ProcessorUsage', { Value: '3' })), undefined);
  });

  it('drops the Initialized snapshot of an inactive state, keeps an active one', () => {
    assert.equal(mapNotification(n('tns1:VideoSource/MotionAlarm', { State: 'false' }, 'Initialized')), undefined);
    assert.equal(mapNotification(n('tns1:VideoSource/MotionAlarm', { State: 'true' }, 'Initialized'))?.data.state, true);
  });

  it('a cleared tamper is info, an active one keeps the default (warning) severity', () => {
    assert.equal(mapNotification(n('tns1:VideoSource/GlobalSceneChange/ImagingService', { State: 'false' }))?.severity, 'info');
    assert.equal(mapNotification(n('tns1:VideoSource/GlobalSceneChange/ImagingService', { State: 'true' }))?.severity, undefined);
  });
});

describe('onvif camera properties', () => {
  it('validates and fills numbers from strings (Node-RED sends strings)', () => {
    assert.deepEqual(parseCameraProps({ host: ' 10.0.0.5 ', port: '8080', username: 'u', password: '', subscriptionS: 60 }), {
      host: '10.0.0.5',
      port: 8080,
      username: 'u',
      subscriptionS: 60,
    });
  });

  it('names the bad property', () => {
    throwsCode(() => parseCameraProps({}), 'EDGE_CONFIG_INVALID', /^host /);
    throwsCode(() => parseCameraProps({ host: 'h', port: 70000 }), 'EDGE_CONFIG_INVALID', /^port /);
    throwsCode(() => parseCameraProps({ host: 'h', renewAt: 1.5 }), 'EDGE_CONFIG_INVALID', /^renewAt /);
    // HTTP Digest sends the name as a quoted string: a quote, a backslash or a line break would break (or inject) the header.
    for (const username of ['a"b', 'a\\b', 'a\r\nX-Injected: 1', 'tab\there']) {
      throwsCode(() => parseCameraProps({ host: 'h', username }), 'EDGE_CONFIG_INVALID', /^username /);
    }
    assert.equal(parseCameraProps({ host: 'h', username: 'ops&<gate> 岗亭' }).username, 'ops&<gate> 岗亭');
  });
});
