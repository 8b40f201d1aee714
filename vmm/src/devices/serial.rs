//! 16550 UARTs (vm-superio) wired to the `-l` targets (`crate::console_io`).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;
use crate::sandbox::{self, ThreadKind};

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;

pub struct SerialPort(Uart);

/// vm-superio's `SerialState` (public fields): the UART's registers and its receive FIFO.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialStateDef {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// A UART in a snapshot.
#[derive(Serialize, Deserialize)]
pub struct SerialPortState(#[serde(with = "SerialStateDef")] SerialState);

impl SerialPort {
    pub fn save(&self) -> SerialPortState {
        SerialPortState(self.0.state())
    }

    /// Takes the saved registers over, keeping this port's interrupt line and output; raises
    /// the interrupt the saved state had pending.
    pub fn restore(&mut self, s: &SerialPortState) -> Result<(), String> {
        let evt = |e: io::Error| format!("serial: {e}");
        let trigger = IrqTrigger(self.0.interrupt_evt().0.try_clone().map_err(evt)?);
        let spare = IrqTrigger(trigger.0.try_clone().map_err(evt)?);
        let out = std::mem::replace(&mut self.0, Serial::new(spare, Box::new(io::sink()))).into_writer();
        self.0 = Serial::from_state(&s.0, trigger, NoEvents, out).map_err(|e| format!("serial: {e:?}"))?;
        Ok(())
    }
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.0.read(offset as u8);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        // An interrupt that cannot be signalled is lost like a dropped line; output still flows.
        let _ = self.0.write(offset as u8, data[0]);
    }
}

pub fn new_port(irq: EventFd, output: Box<dyn Write + Send>) -> SerialPort {
    SerialPort(Serial::new(IrqTrigger(irq), output))
}

/// Feeds console input to the UART, waiting while its FIFO is full.
pub fn spawn_input(port: Arc<Mutex<SerialPort>>, mut input: Box<dyn Read + Send>) -> io::Result<()> {
    sandbox::spawn(ThreadKind::ConsoleInput, "console-in".into(), move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = input.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let taken = port.lock().unwrap().0.enqueue_raw_bytes(rest).unwrap_or(0);
                rest = &rest[taken..];
                if !rest.is_empty() {
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    })
    .map(drop)
}
