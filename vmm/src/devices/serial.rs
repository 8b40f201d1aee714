//! 16550 UARTs (vm-superio) wired to the `-l` targets (`crate::console_io`).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::PioDevice;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

pub struct SerialPort(Uart);

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
pub fn spawn_input(port: Arc<Mutex<SerialPort>>, mut input: Box<dyn Read + Send>) {
    thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
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
        .expect("spawn console input thread");
}
