# bash completion for dkms (dkmsd)
_dkms()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	-k|--kernelver|--templatekernel)
		COMPREPLY=( $(compgen -W "$(ls /lib/modules 2>/dev/null)" -- "$cur") ); return ;;
	-m|--module)
		COMPREPLY=( $(compgen -W "$(ls /var/lib/dkms 2>/dev/null)" -- "$cur") ); return ;;
	-c|--archive|--config|--dkmstree|--sourcetree|--installtree|--kernelsourcedir|--root)
		COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
	esac
	if [ "$COMP_CWORD" -eq 1 ]; then
		COMPREPLY=( $(compgen -W "add remove build unbuild install uninstall autoinstall match mktarball ldtarball mkdriverdisk status generate_mok sign initrd verify cache kernel_preinst kernel_postinst kernel_prerm" -- "$cur") )
		return
	fi
	case $cur in
	-*) COMPREPLY=( $(compgen -W "-m -v -k -a -c -j -q --all --force --force-version-override --verbose --no-depmod --no-initrd --binaries-only --source-only --archive --templatekernel --kernelsourcedir --dkmstree --sourcetree --installtree --root --directive --initrd-strategy" -- "$cur") ) ;;
	*) COMPREPLY=( $(compgen -W "$(cd /var/lib/dkms 2>/dev/null && ls -d */* 2>/dev/null | grep -v '/kernel-')" -- "$cur") ) ;;
	esac
}
complete -F _dkms dkms
