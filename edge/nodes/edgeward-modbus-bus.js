'use strict';

/**
 * edgeward-modbus-bus (config node): one Modbus line, an RS-485 serial port
 * (RTU) or a Modbus TCP server. It only holds the properties: the first
 * device node that uses it acquires the shared bus (one transaction queue)
 * from the runtime's registry under this node's id, and the bus closes when
 * the last device node using it is closed.
 */
module.exports = function register(RED) {
  function EdgewardModbusBusNode(config) {
    RED.nodes.createNode(this, config);
    this.name = config.name;
    // Passed as-is: the driver validates them (drivers/modbus parseBusProps) and names a bad field.
    this.edgewardProps = {
      transport: config.transport,
      path: config.path,
      baudRate: config.baudRate,
      parity: config.parity,
      stopBits: config.stopBits,
      host: config.host,
      port: config.port,
      timeoutMs: config.timeoutMs,
    };
  }

  RED.nodes.registerType('edgeward-modbus-bus', EdgewardModbusBusNode);
};
