//! ferry: carry a live CI session across an OS upgrade and a kexec reboot.
