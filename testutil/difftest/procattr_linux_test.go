package difftest

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the kernel kill the dflockd process if the test
// process dies without cleaning up (killed, or a timeout panic).
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
