"""A RAM NOR-flash block device for os.VfsLfs2 on the MicroPython unix port.

    dev = RamFlash(64)                       # 64 blocks x 4096 bytes, all erased (0xff)
    os.VfsLfs2.mkfs(dev); os.mount(os.VfsLfs2(dev), "/flash")
    dev.cut_at = 17                          # snapshot the flash as it is at op 17
    ...                                      # dev.snap / dev.snap_half: the images

The extended block protocol (readblocks(n, buf, off), writeblocks(n, buf, off),
ioctl(op, arg) with op 6 = erase), as the ESP32's esp32.Partition offers it to
LittleFS. It behaves like NOR flash: an erase sets a whole 4 KB block to 0xff,
a program can only clear bits (new = old & data), so a program into a block
that was not erased shows up as garbage instead of silently working.

Every program and every erase is one numbered "op" (0, 1, 2, ...). With
`cut_at = k`, op k takes two pictures of the flash before carrying on as
normal: `snap`, the flash with op k not done at all (the power went before it
started), and `snap_half`, with op k half done (a program: the first half of
its bytes; an erase: the first half of the block). A power cut at op k leaves
the flash in one of those states (or worse, but a half is the usual model).
The device itself never fails, so the run that took the pictures goes on to
its end and tells which ids and sequence numbers it had handed out before op k.
"""
ERASED = 0xFF


class RamFlash:
    def __init__(self, blocks, block_size=4096, image=None):
        self.bs = block_size
        self.blocks = blocks
        if image is None:
            self.data = bytearray(b"\xff" * (blocks * block_size))
        else:
            assert len(image) == blocks * block_size
            self.data = bytearray(image)
        self.ops = 0          # programs + erases so far
        self.progs = 0
        self.erases = 0
        self.prog_bytes = 0
        self.not_erased = 0   # bytes programmed where the old bits garbled them (must stay 0)
        self.erase_count = [0] * blocks
        self.cut_at = -1
        self.snap = None
        self.snap_half = None

    def readblocks(self, n, buf, off=0):
        a = n * self.bs + off
        buf[:] = memoryview(self.data)[a:a + len(buf)]

    def _take(self, n, half):
        """The pictures for a cut at this op; `half(image)` does the first half of the op."""
        self.snap = bytes(self.data)
        img = bytearray(self.data)
        half(img)
        self.snap_half = bytes(img)

    def _program(self, d, a, buf, m):
        for i in range(m):
            old = d[a + i]
            new = old & buf[i]
            if new != buf[i]:
                self.not_erased += 1
            d[a + i] = new

    def writeblocks(self, n, buf, off=None):
        if off is None:  # simple protocol: whole blocks, erase implied
            for i in range(len(buf) // self.bs):
                self.ioctl(6, n + i)
            off = 0
        a = n * self.bs + off
        m = len(buf)
        if self.ops == self.cut_at:
            self._take(n, lambda img: self._program(img, a, buf, m // 2))
        self.ops += 1
        self.progs += 1
        self.prog_bytes += m
        self._program(self.data, a, buf, m)
        return 0

    def _erase(self, d, n, m):
        a = n * self.bs
        d[a:a + m] = b"\xff" * m

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return self.bs
        if op == 6:  # erase
            if self.ops == self.cut_at:
                self._take(arg, lambda img: self._erase(img, arg, self.bs // 2))
            self.ops += 1
            self.erases += 1
            self.erase_count[arg] += 1
            self._erase(self.data, arg, self.bs)
            return 0
        return 0  # 1 init, 2 deinit, 3 sync
