//! Fixes to criu's images between the dump and the restore, made through
//! `crit` (it ships with Debian's criu): `crit decode` to JSON, an edit,
//! `crit encode` back. The edits are pure functions over that JSON; the
//! original of every image touched is kept in `images-orig/` of the run.
//!
//! The one fix today: an executable that lost its exec bits in the
//! upgrade (see `phases::dump_plan`). The task's `mm` image names its exe
//! file (`exe_file_id`); `files.img` has that file's entry with the mode
//! criu saw; `remap-fpath.img` says the file was deleted and where its
//! copy is: a ghost file (`ghost-file-<id>.img`, contents in the image,
//! with a mode of its own) or a linked remap (a hard link criu made next
//! to it, with its own `files.img` entry). Both modes must match, or
//! criu's mode check fails the restore; both get the exec bits back.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::exec::{CommandSpec, Runner};
use crate::phases::PhaseError;
use crate::phases::dump_plan::ExecFix;

/// `crit`, run through the command runner (each call a span and a log).
pub struct Crit<'a> {
    pub runner: &'a dyn Runner,
    pub program: String,
}

fn err(message: String) -> PhaseError {
    PhaseError::new("image_fix", message)
}

impl<'a> Crit<'a> {
    /// The `crit` found on `PATH`, run through `runner`.
    pub fn on_path(runner: &'a dyn Runner) -> Crit<'a> {
        Crit {
            runner,
            program: "crit".into(),
        }
    }

    /// The image as crit's JSON.
    pub fn decode(&self, img: &Path) -> Result<Value, PhaseError> {
        let out = img.with_extension("img.json");
        self.runner
            .run(
                &CommandSpec::new(&self.program)
                    .args(["decode", "-i"])
                    .arg(img.display().to_string())
                    .arg("-o")
                    .arg(out.display().to_string())
                    .log_name("crit")
                    .missing_hint("install criu (Debian's package ships crit) or set PATH"),
            )?
            .check()?;
        let text = std::fs::read_to_string(&out)
            .map_err(|e| err(format!("cannot read {}: {e}", out.display())))?;
        let _ = std::fs::remove_file(&out);
        serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "crit decoded {} into something that is not JSON: {e}",
                img.display()
            ))
        })
    }

    /// Write `json` back as `img`, keeping the first original in `orig`.
    pub fn encode(&self, json: &Value, img: &Path, orig: &Path) -> Result<(), PhaseError> {
        self.stage(json, img, orig)?.commit()
    }

    /// Encodes `json` next to `img` (keeping the original in `orig` first)
    /// without replacing it yet: images that must change together are all
    /// encoded before any is replaced.
    fn stage(&self, json: &Value, img: &Path, orig: &Path) -> Result<Staged, PhaseError> {
        let name = img
            .file_name()
            .ok_or_else(|| err(format!("{} has no file name", img.display())))?;
        std::fs::create_dir_all(orig)
            .map_err(|e| err(format!("cannot create {}: {e}", orig.display())))?;
        let kept = orig.join(name);
        if !kept.exists() {
            std::fs::copy(img, &kept)
                .map_err(|e| err(format!("cannot keep {}: {e}", img.display())))?;
        }
        let input = img.with_extension("img.json");
        let output = img.with_extension("img.new");
        std::fs::write(&input, json.to_string())
            .map_err(|e| err(format!("cannot write {}: {e}", input.display())))?;
        let ran = self
            .runner
            .run(
                &CommandSpec::new(&self.program)
                    .args(["encode", "-i"])
                    .arg(input.display().to_string())
                    .arg("-o")
                    .arg(output.display().to_string())
                    .log_name("crit"),
            )
            .map_err(PhaseError::from)
            .and_then(|o| o.check().map_err(PhaseError::from));
        let _ = std::fs::remove_file(&input);
        ran?;
        Ok(Staged {
            new: output,
            img: img.to_path_buf(),
        })
    }
}

/// An image encoded beside the one it replaces.
struct Staged {
    new: PathBuf,
    img: PathBuf,
}

impl Staged {
    fn commit(self) -> Result<(), PhaseError> {
        std::fs::rename(&self.new, &self.img)
            .map_err(|e| err(format!("cannot replace {}: {e}", self.img.display())))
    }
}

/// Can crit read and write this criu's images? Decodes `files.img` and
/// encodes it again; the bytes must come back the same.
pub fn check_crit(runner: &dyn Runner, images: &Path) -> Result<(), PhaseError> {
    let crit = Crit::on_path(runner);
    let img = images.join("files.img");
    let json = crit.decode(&img)?;
    let copy = images.join("crit-check");
    std::fs::create_dir_all(&copy).map_err(|e| err(e.to_string()))?;
    let again = copy.join("files.img");
    std::fs::copy(&img, &again).map_err(|e| err(e.to_string()))?;
    crit.encode(&json, &again, &copy.join("orig"))?;
    let (a, b) = (std::fs::read(&img), std::fs::read(&again));
    let _ = std::fs::remove_dir_all(&copy);
    match (a, b) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        _ => Err(err(
            "crit does not give back files.img byte for byte: the image fixes cannot be trusted"
                .into(),
        )),
    }
}

/// Give each executable in `fixes` its exec bits back in the images under
/// `images`. Returns what was changed, for people.
pub fn fix_exec_bits(
    runner: &dyn Runner,
    images: &Path,
    orig: &Path,
    fixes: &[ExecFix],
) -> Result<Vec<String>, PhaseError> {
    if fixes.is_empty() {
        return Ok(Vec::new());
    }
    let crit = Crit::on_path(runner);
    let files_img = images.join("files.img");
    let mut files = crit.decode(&files_img)?;
    let remaps = match images.join("remap-fpath.img") {
        p if p.exists() => crit.decode(&p)?,
        _ => Value::Null,
    };
    let mut done = Vec::new();
    let mut files_changed = false;
    for fix in fixes {
        let mm = crit.decode(&images.join(format!("mm-{}.img", fix.pid)))?;
        let id = exe_file_id(&mm).ok_or_else(|| {
            err(format!(
                "mm-{}.img names no executable (pid {})",
                fix.pid, fix.pid
            ))
        })?;
        let perm = fix.mode_after();
        let entry = reg_entry_mut(&mut files, id).ok_or_else(|| {
            err(format!(
                "files.img has no file {id:#x} (the exe of pid {})",
                fix.pid
            ))
        })?;
        let name = entry["name"].as_str().unwrap_or_default().to_string();
        if Path::new("/").join(name.trim_start_matches('/')) != Path::new(&fix.path) {
            return Err(err(format!(
                "the exe of pid {} in the images is {name:?}, not {}: images and session disagree",
                fix.pid, fix.path
            )));
        }
        let before = set_perm(entry, perm)?;
        if before & 0o111 != 0 {
            // An earlier attempt fixed it already.
            set_perm(entry, before)?;
            continue;
        }
        files_changed = true;
        match remap_of(&remaps, id) {
            Some((remap_id, Remap::Ghost)) => {
                let path = images.join(format!("ghost-file-{remap_id:x}.img"));
                let mut ghost = crit.decode(&path)?;
                let g = ghost
                    .get_mut("entries")
                    .and_then(|e| e.get_mut(0))
                    .ok_or_else(|| err(format!("{} has no entry", path.display())))?;
                set_perm(g, perm)?;
                crit.encode(&ghost, &path, orig)?;
                done.push(format!(
                    "exe of pid {} ({}): mode {before:04o} -> {perm:04o} in files.img and ghost-file-{remap_id:x}.img",
                    fix.pid, fix.path
                ));
            }
            Some((remap_id, Remap::Linked)) => {
                let link = reg_entry_mut(&mut files, remap_id)
                    .ok_or_else(|| err(format!("files.img has no link remap {remap_id:#x}")))?;
                set_perm(link, perm)?;
                let on_disk = PathBuf::from("/").join(
                    link["name"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches('/'),
                );
                crate::state::set_mode(&on_disk, perm).map_err(|e| {
                    err(format!(
                        "cannot chmod the link remap {}: {e}",
                        on_disk.display()
                    ))
                })?;
                done.push(format!(
                    "exe of pid {} ({}): mode {before:04o} -> {perm:04o} in files.img and on its link remap {}",
                    fix.pid,
                    fix.path,
                    on_disk.display()
                ));
            }
            None => {
                // Not deleted after all (a mode change in place): the file
                // on disk must match the image too.
                crate::state::set_mode(Path::new(&fix.path), perm)
                    .map_err(|e| err(format!("cannot chmod {}: {e}", fix.path)))?;
                done.push(format!(
                    "exe of pid {} ({}): mode {before:04o} -> {perm:04o} in files.img and on disk",
                    fix.pid, fix.path
                ));
            }
        }
    }
    if files_changed {
        crit.encode(&files, &files_img, orig)?;
    }
    Ok(done)
}

/// Point each `/dev/tty` fd of `fixes` (dumped as an external tty, see
/// `phases::dump_plan::ctty_plan`) at a file of its own on the pts it is:
/// a new tty file entry on that pts's slave, with the flags and owner the
/// `/dev/tty` file had, and a path entry like the slave's other opens.
/// The external entry goes. criu then opens it like any other slave fd.
pub fn fix_ctty(
    runner: &dyn Runner,
    images: &Path,
    orig: &Path,
    fixes: &[crate::phases::dump_plan::CttyFix],
) -> Result<Vec<String>, PhaseError> {
    use std::collections::BTreeMap;
    if fixes.is_empty() {
        return Ok(Vec::new());
    }
    let crit = Crit::on_path(runner);
    let files_img = images.join("files.img");
    let mut files = crit.decode(&files_img)?;
    let tty_info = crit.decode(&images.join("tty-info.img"))?;
    let mut tables: BTreeMap<u64, Value> = BTreeMap::new();
    let mut made: BTreeMap<u64, u64> = BTreeMap::new();
    let mut done = Vec::new();
    for fix in fixes {
        let ids = crit.decode(&images.join(format!("ids-{}.img", fix.pid)))?;
        let files_id = ids
            .get("entries")
            .and_then(|e| e.get(0))
            .and_then(|e| e.get("files_id"))
            .and_then(Value::as_u64)
            .ok_or_else(|| err(format!("ids-{}.img has no files_id", fix.pid)))?;
        let table = match tables.entry(files_id) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(crit.decode(&images.join(format!("fdinfo-{files_id}.img")))?)
            }
        };
        let entry = fd_entry_mut(table, fix.fd).ok_or_else(|| {
            err(format!(
                "pid {} has no fd {} in the images",
                fix.pid, fix.fd
            ))
        })?;
        let current = entry
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| err(format!("fd {} of pid {} has no file id", fix.fd, fix.pid)))?;
        if !is_external_tty(&files, current) && !made.contains_key(&current) {
            // An earlier attempt fixed it already.
            continue;
        }
        let new_id = match made.get(&current) {
            Some(&id) => id,
            None => {
                let id = clone_slave(&mut files, &tty_info, current, fix.pts)?;
                made.insert(current, id);
                id
            }
        };
        entry["id"] = Value::from(new_id);
        done.push(format!(
            "/dev/tty on fd {} of pid {} opened as pts/{} (file {new_id:#x} in files.img, fdinfo-{files_id}.img)",
            fix.fd, fix.pid, fix.pts
        ));
    }
    if made.is_empty() {
        return Ok(done);
    }
    if let Some(entries) = files.get_mut("entries").and_then(Value::as_array_mut) {
        entries.retain(|e| {
            !e.get("id")
                .and_then(Value::as_u64)
                .is_some_and(|id| made.contains_key(&id))
        });
    }
    // files.img and the fdinfo images refer to each other's ids: a crit
    // failure between two replacements would leave fds pointing at files
    // that are gone, and a later attempt would take them for fixed.
    let mut staged = vec![crit.stage(&files, &files_img, orig)?];
    for (files_id, table) in &tables {
        staged.push(crit.stage(table, &images.join(format!("fdinfo-{files_id}.img")), orig)?);
    }
    for s in staged {
        s.commit()?;
    }
    Ok(done)
}

/// The fdinfo entry of `fd`.
pub fn fd_entry_mut(table: &mut Value, fd: i32) -> Option<&mut Value> {
    table
        .get_mut("entries")?
        .as_array_mut()?
        .iter_mut()
        .find(|e| e.get("fd").and_then(Value::as_i64) == Some(i64::from(fd)))
}

fn file_entry(files: &Value, id: u64) -> Option<&Value> {
    files
        .get("entries")?
        .as_array()?
        .iter()
        .find(|e| e.get("id").and_then(Value::as_u64) == Some(id))
}

/// A tty file entry without a path: criu's external tty.
pub fn is_external_tty(files: &Value, id: u64) -> bool {
    file_entry(files, id).is_some_and(|e| {
        e.get("type") == Some(&Value::from("TTY"))
            && e.get("tty").is_some_and(|t| t.get("regf_id").is_none())
    })
}

/// The id of the tty-info entry of the slave `/dev/pts/N` (rdev major
/// 136 to 143).
pub fn slave_info_id(tty_info: &Value, pts: u32) -> Option<u64> {
    tty_info.get("entries")?.as_array()?.iter().find_map(|e| {
        let index = e.get("pty")?.get("index")?.as_u64()?;
        let rdev = e.get("rdev")?.as_u64()?;
        let major = (rdev >> 8) & 0xfff;
        (index == u64::from(pts) && (136..=143).contains(&major)).then(|| e.get("id")?.as_u64())?
    })
}

/// Add a tty file entry (and its path entry) on the slave of `pts`, with
/// the flags and owner of file `like`; returns its id.
pub fn clone_slave(
    files: &mut Value,
    tty_info: &Value,
    like: u64,
    pts: u32,
) -> Result<u64, PhaseError> {
    let info = slave_info_id(tty_info, pts).ok_or_else(|| {
        err(format!(
            "tty-info.img has no slave pts/{pts}: the session does not hold that terminal"
        ))
    })?;
    let (flags, fown) = {
        let ext = file_entry(files, like)
            .and_then(|e| e.get("tty"))
            .ok_or_else(|| err(format!("files.img has no tty file {like:#x}")))?;
        (ext.get("flags").cloned(), ext.get("fown").cloned())
    };
    let entries = files
        .get("entries")
        .and_then(Value::as_array)
        .ok_or_else(|| err("files.img has no entries".into()))?;
    // The path of an existing open of that slave (`/dev/pts/N`).
    let reg = entries
        .iter()
        .filter(|e| {
            e.get("tty")
                .and_then(|t| t.get("tty_info_id"))
                .and_then(Value::as_u64)
                == Some(info)
        })
        .find_map(|e| e.get("tty")?.get("regf_id")?.as_u64())
        .and_then(|rid| file_entry(files, rid))
        .and_then(|e| e.get("reg"))
        .cloned()
        .ok_or_else(|| {
            err(format!(
                "no open of pts/{pts} in files.img to take its path from"
            ))
        })?;
    let next = entries
        .iter()
        .filter_map(|e| e.get("id").and_then(Value::as_u64))
        .max()
        .unwrap_or(0)
        + 1;
    let (tty_id, reg_id) = (next, next + 1);
    let mut reg = reg;
    reg["id"] = Value::from(reg_id);
    if let Some(f) = &flags {
        reg["flags"] = f.clone();
    }
    let mut tty = serde_json::json!({"id": tty_id, "tty_info_id": info, "regf_id": reg_id});
    if let Some(f) = flags {
        tty["flags"] = f;
    }
    if let Some(o) = fown {
        tty["fown"] = o;
    }
    let list = files
        .get_mut("entries")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| err("files.img has no entries".into()))?;
    list.push(serde_json::json!({"type": "REG", "id": reg_id, "reg": reg}));
    list.push(serde_json::json!({"type": "TTY", "id": tty_id, "tty": tty}));
    Ok(tty_id)
}

/// `exe_file_id` of an `mm` image.
pub fn exe_file_id(mm: &Value) -> Option<u64> {
    mm.get("entries")?.get(0)?.get("exe_file_id")?.as_u64()
}

/// The `reg` part of the regular-file entry `id` of `files.img`.
pub fn reg_entry_mut(files: &mut Value, id: u64) -> Option<&mut Value> {
    files
        .get_mut("entries")?
        .as_array_mut()?
        .iter_mut()
        .find(|e| {
            e.get("id").and_then(Value::as_u64) == Some(id)
                && e.get("type") == Some(&Value::from("REG"))
        })?
        .get_mut("reg")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remap {
    Ghost,
    Linked,
}

/// Where `remap-fpath.img` sends file `id`: `(remap_id, kind)`.
pub fn remap_of(remaps: &Value, id: u64) -> Option<(u64, Remap)> {
    remaps.get("entries")?.as_array()?.iter().find_map(|e| {
        if e.get("orig_id")?.as_u64()? != id {
            return None;
        }
        let remap_id = e.get("remap_id")?.as_u64()?;
        // A missing type is a linked remap (the field came later).
        match e.get("remap_type").and_then(Value::as_str) {
            Some("GHOST") => Some((remap_id, Remap::Ghost)),
            Some("LINKED") | None => Some((remap_id, Remap::Linked)),
            Some(_) => None,
        }
    })
}

/// Set the permission bits of an entry's `mode`, keeping its file type;
/// returns the old permission bits.
pub fn set_perm(entry: &mut Value, perm: u32) -> Result<u32, PhaseError> {
    let mode = entry
        .get("mode")
        .and_then(Value::as_u64)
        .ok_or_else(|| err("an image entry has no numeric mode".into()))?;
    let before = (mode & 0o7777) as u32;
    entry["mode"] = Value::from((mode & !0o7777) | u64::from(perm & 0o7777));
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Shapes of `crit decode` output (criu 3.17.1, Debian 12) for a
    /// session whose sudo was replaced by the upgrade.
    fn files() -> Value {
        json!({"magic": "FILES", "entries": [
            {"id": 1, "type": "TTY", "tty": {"id": 1, "tty_info_id": 2, "flags": 2}},
            {"id": 12, "type": "REG", "reg": {"id": 12, "flags": 32768, "pos": 0,
                "name": "/usr/bin/sudo", "size": 281624, "mode": 33152}},
            {"id": 14, "type": "REG", "reg": {"id": 14, "flags": 32768, "pos": 0,
                "name": "/usr/bin/link_remap.3", "mode": 33152}}
        ]})
    }

    #[test]
    fn the_exe_entry_and_its_ghost_are_found() {
        let mm = json!({"magic": "MM", "entries": [{"mm_start_code": 1, "exe_file_id": 12}]});
        assert_eq!(exe_file_id(&mm), Some(12));
        assert_eq!(exe_file_id(&json!({"entries": []})), None);
        let mut f = files();
        assert_eq!(reg_entry_mut(&mut f, 12).unwrap()["name"], "/usr/bin/sudo");
        assert!(
            reg_entry_mut(&mut f, 1).is_none(),
            "a tty is no regular file"
        );
        assert!(reg_entry_mut(&mut f, 99).is_none());
        let remaps = json!({"magic": "REMAP_FPATH", "entries": [
            {"orig_id": 12, "remap_id": 0, "remap_type": "GHOST"},
            {"orig_id": 13, "remap_id": 14, "remap_type": "LINKED"},
            {"orig_id": 15, "remap_id": 16}
        ]});
        assert_eq!(remap_of(&remaps, 12), Some((0, Remap::Ghost)));
        assert_eq!(remap_of(&remaps, 13), Some((14, Remap::Linked)));
        assert_eq!(remap_of(&remaps, 15), Some((16, Remap::Linked)));
        assert_eq!(remap_of(&remaps, 7), None);
        assert_eq!(remap_of(&Value::Null, 12), None);
    }

    /// As crit decodes them for `sudo sleep` in an ssh session (criu
    /// 3.17.1): sshd's ptmx (file 46, tty-info 1), bash's pts/0 (file 55,
    /// tty-info 0), sudo's /dev/tty dumped as external (file 76).
    fn tty_images() -> (Value, Value, Value) {
        let fown = json!({"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0});
        let files = json!({"magic": "FILES", "entries": [
            {"type": "REG", "id": 47, "reg": {"id": 47, "flags": 34818, "pos": 0, "fown": fown, "name": "/dev/ptmx", "mode": 8630}},
            {"type": "TTY", "id": 46, "tty": {"id": 46, "tty_info_id": 1, "flags": 34818, "fown": fown, "regf_id": 47}},
            {"type": "REG", "id": 56, "reg": {"id": 56, "flags": 2, "pos": 0, "fown": fown, "name": "/dev/pts/0", "mode": 8592}},
            {"type": "TTY", "id": 55, "tty": {"id": 55, "tty_info_id": 0, "flags": 2, "fown": fown, "regf_id": 56}},
            {"type": "TTY", "id": 76, "tty": {"id": 76, "tty_info_id": 2026, "flags": 34818, "fown": fown}}
        ]});
        let tty_info = json!({"magic": "TTY_INFO", "entries": [
            {"id": 1, "type": "PTY", "rdev": 1282, "pty": {"index": 0}},
            {"id": 0, "type": "PTY", "rdev": 34816, "pty": {"index": 0}}
        ]});
        let fdinfo = json!({"magic": "FDINFO", "entries": [
            {"id": 55, "flags": 0, "type": "TTY", "fd": 0},
            {"id": 76, "flags": 1, "type": "TTY", "fd": 9}
        ]});
        (files, tty_info, fdinfo)
    }

    #[test]
    fn a_dev_tty_becomes_its_own_open_of_the_pts() {
        let (mut files, tty_info, mut fdinfo) = tty_images();
        assert!(is_external_tty(&files, 76));
        assert!(!is_external_tty(&files, 55));
        assert_eq!(slave_info_id(&tty_info, 0), Some(0), "the slave, not ptmx");
        assert_eq!(slave_info_id(&tty_info, 1), None);
        let id = clone_slave(&mut files, &tty_info, 76, 0).unwrap();
        assert_eq!(id, 77);
        let tty = file_entry(&files, 77).unwrap();
        assert_eq!(tty["tty"]["tty_info_id"], 0);
        assert_eq!(tty["tty"]["flags"], 34818, "the /dev/tty file's own flags");
        assert_eq!(tty["tty"]["regf_id"], 78);
        let reg = file_entry(&files, 78).unwrap();
        assert_eq!(reg["reg"]["name"], "/dev/pts/0");
        assert_eq!(reg["reg"]["flags"], 34818);
        fd_entry_mut(&mut fdinfo, 9).unwrap()["id"] = Value::from(id);
        assert_eq!(fdinfo["entries"][1]["id"], 77);
        assert!(fd_entry_mut(&mut fdinfo, 3).is_none());
        let err = clone_slave(&mut files, &tty_info, 76, 4).unwrap_err();
        assert!(err.message.contains("no slave pts/4"), "{}", err.message);
    }

    #[test]
    fn modes_keep_their_file_type() {
        let mut f = files();
        let e = reg_entry_mut(&mut f, 12).unwrap();
        // 33152 = 0o100600: a regular file, rw-------.
        assert_eq!(set_perm(e, 0o755).unwrap(), 0o600);
        assert_eq!(e["mode"], 0o100755);
        let mut ghost = json!({"uid": 0, "gid": 0, "mode": 0o100600, "size": 281624});
        set_perm(&mut ghost, 0o755).unwrap();
        assert_eq!(ghost["mode"], 0o100755);
        assert!(set_perm(&mut json!({"mode": "0x81a4"}), 0o755).is_err());
    }
}
