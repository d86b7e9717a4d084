"""Rigid frames (Supplement 1.1, 1.8.1): a frame T = (R, t) maps local coordinates x to global
ones T . x = R x + t. Rotations as 3x3 matrices (columns: the frame's axes in global coordinates)
or as unit quaternions (Algorithm 23).

Shapes: `*` batch dims (residues, rigid groups, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (a, b, c, d) [*, 4] -> rotation matrix [*, 3, 3] (Algorithm 23, line 3)."""
    a, b, c, d = q.unbind(-1)
    rows = (
        (a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)),
        (2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)),
        (2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def quat_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product q1 q2 [*, 4]; quat_to_rot(q1 q2) = quat_to_rot(q1) @ quat_to_rot(q2)."""
    a1, b1, c1, d1 = q1.unbind(-1)
    a2, b2, c2, d2 = q2.unbind(-1)
    return torch.stack(
        (
            a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2,
        ),
        dim=-1,
    )



def _gram_schmidt(v1: torch.Tensor, v2: torch.Tensor, eps: float) -> torch.Tensor:
    """The rotation [*, 3, 3] whose columns are e1 along v1, e2 the part of v2 orthogonal to e1
    (normalised) and e3 = e1 x e2; v1, v2 [*, 3]. eps keeps the norms finite for degenerate points."""
    e1 = v1 / torch.sqrt(v1.square().sum(-1, keepdim=True) + eps)
    u2 = v2 - e1 * (e1 * v2).sum(-1, keepdim=True)
    e2 = u2 / torch.sqrt(u2.square().sum(-1, keepdim=True) + eps)
    return torch.stack((e1, e2, torch.cross(e1, e2, dim=-1)), dim=-1)


@dataclass

class Rigid:
    """A batch of frames: rot [*, 3, 3], trans [*, 3] (batch shape `*`)."""

    rot: torch.Tensor
    trans: torch.Tensor

    @classmethod
    def identity(cls, shape: tuple[int, ...], device=None, dtype=torch.float32) -> Rigid:
        rot = torch.eye(3, device=device, dtype=dtype).expand(*shape, 3, 3).clone()
        return cls(rot, torch.zeros(*shape, 3, device=device, dtype=dtype))

    @classmethod
    def from_3_points(cls, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, eps: float = 1e-8) -> Rigid:
        """Algorithm 21 (Gram-Schmidt): the frame at x2 with e1 along x3 - x2 and x1 in the e1-e2 plane.
        For backbone frames x1, x2, x3 = N, CA, C. Each [*, 3]."""
        return cls(_gram_schmidt(x3 - x2, x1 - x2, eps), x2)

    @classmethod
    def from_3_points_neg_x(
        cls, point_on_neg_x_axis: torch.Tensor, origin: torch.Tensor, point_on_xy_plane: torch.Tensor, eps: float = 1e-8
    ) -> Rigid:
        """The frame at `origin` whose x axis points from `point_on_neg_x_axis` to the origin and whose
        xy plane holds `point_on_xy_plane` (y > 0): AlphaFold's rigids_from_3_points, the construction
        of the rigid-group frames from atoms (Supplement 1.8.4, Algorithm 21 with the axis order of
        the side-chain groups). Each [*, 3]."""
        return cls(_gram_schmidt(origin - point_on_neg_x_axis, point_on_xy_plane - origin, eps), origin)

    @classmethod
    def from_4x4(cls, m: torch.Tensor) -> Rigid:
        """Homogeneous matrices [*, 4, 4] -> frames."""
        return cls(m[..., :3, :3], m[..., :3, 3])

    @classmethod
    def cat(cls, frames: list[Rigid], dim: int) -> Rigid:
        """Concatenate along batch dim `dim` (< 0, counted from the end of the batch shape)."""
        return cls(torch.cat([f.rot for f in frames], dim - 2), torch.cat([f.trans for f in frames], dim - 1))

    def __getitem__(self, index) -> Rigid:
        """Index the batch dims: frames[..., k] is group k of frames of shape [*, G]."""
        index = index if isinstance(index, tuple) else (index,)
        return Rigid(self.rot[index + (slice(None), slice(None))], self.trans[index + (slice(None),)])

    def apply_rotation(self, rot: torch.Tensor) -> Rigid:
        """self . (rot, 0): rotate the frame about its own origin; rot [*, 3, 3]."""
        return Rigid(self.rot @ rot, self.trans)

    def detach(self) -> Rigid:
        return Rigid(self.rot.detach(), self.trans.detach())

    @property
    def shape(self) -> torch.Size:
        return self.trans.shape[:-1]

    def compose(self, other: Rigid) -> Rigid:
        """self . other: x -> R1 (R2 x + t2) + t1."""
        return Rigid(self.rot @ other.rot, (self.rot @ other.trans.unsqueeze(-1)).squeeze(-1) + self.trans)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """T . x = R x + t; x [*, 3] with `*` broadcastable against the frames' batch shape."""
        return (self.rot @ x.unsqueeze(-1)).squeeze(-1) + self.trans

    def invert(self) -> Rigid:
        rot_t = self.rot.transpose(-1, -2)
        return Rigid(rot_t, -(rot_t @ self.trans.unsqueeze(-1)).squeeze(-1))

    def invert_apply(self, x: torch.Tensor) -> torch.Tensor:
        """T^-1 . x = R^T (x - t)."""
        return (self.rot.transpose(-1, -2) @ (x - self.trans).unsqueeze(-1)).squeeze(-1)

    def unsqueeze(self, dim: int) -> Rigid:
        """Insert a batch dim (dim < 0 counts from the end of the batch shape)."""
        if dim >= 0:
            return Rigid(self.rot.unsqueeze(dim), self.trans.unsqueeze(dim))
        return Rigid(self.rot.unsqueeze(dim - 2), self.trans.unsqueeze(dim - 1))

    def scale_translation(self, factor: float) -> Rigid:
        return Rigid(self.rot, self.trans * factor)
